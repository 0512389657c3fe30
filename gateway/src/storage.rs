//! Dropboxes in an embedded redb database, served by one storage thread.
//!
//! Requests arrive in batches; each batch is one write transaction, and a
//! stored message counts as stored only once that transaction's commit (which
//! is durable: redb fsyncs on commit) has returned. Fetch replies are sent
//! after the commit that deleted the confirmed messages.
//!
//! Sequence numbers come from one counter for the whole gateway and are never
//! reused, so a stale `after_seq` can never delete a newer message.
//!
//! The rules (quotas, the seq counter, the fetch window, authorisation,
//! deletes, expiry) live in [`Storage::apply`], which takes the time as an
//! argument and does no I/O besides the database. The storage thread
//! ([`run`]) drives it on a file with the wall clock and sends the replies;
//! [`Dropboxes`] drives the same code on an in-memory database with the
//! caller's clock, for simulations.

use crate::GatewayConfig;
use crate::batch::Batches;
use crate::metrics::GatewayMetrics;
use node::NodeRef;
use protocol::messages::{FetchReply, FetchRequest, Listing, MAX_LISTING, RefusalReason, Refused};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// (dropbox id, seq) → stored_at_ms:u64be || ciphertext
const MESSAGES: TableDefinition<(&[u8; 32], u64), &[u8]> = TableDefinition::new("messages");
/// dropbox id → (messages, bytes)
const BOXES: TableDefinition<&[u8; 32], (u64, u64)> = TableDefinition::new("boxes");
/// "next_seq", "bytes"
const TOTALS: TableDefinition<&str, u64> = TableDefinition::new("totals");
/// (stored_at_ms, dropbox id, seq) → (): what expires first, without a scan.
const EXPIRY: TableDefinition<(u64, &[u8; 32], u64), ()> = TableDefinition::new("expiry");

/// Bytes each stored message is charged beyond its ciphertext, against the
/// quota and the disk reserve: its keys in the message and expiry tables
/// (2 × (32 + 8) + 8), its stored-at time (8) and redb's per-entry
/// bookkeeping, rounded up. So an empty message is not free.
pub const ROW_OVERHEAD: u64 = 160;
/// Batches a gateway tracks at once for batch acknowledgements (each a few
/// dozen bytes; a request waiting on one holds its SURB too).
pub const MAX_BATCHES: usize = 65_536;

/// Limits the storage enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub ttl_ms: u64,
    pub box_messages: u64,
    pub total_bytes: u64,
    pub fetch_max_age_ms: u64,
    /// Stores are refused once the disk's free space would fall below this.
    pub reserve_bytes: u64,
}

impl Limits {
    /// The limits a gateway with `cfg` enforces.
    pub(crate) fn from_config(cfg: &GatewayConfig) -> Self {
        Self {
            ttl_ms: cfg.dropbox_ttl_secs.saturating_mul(1000),
            box_messages: cfg.dropbox_max_messages,
            total_bytes: cfg.storage_max_bytes,
            fetch_max_age_ms: cfg.fetch_max_age_secs.saturating_mul(1000),
            reserve_bytes: cfg.storage_reserve_bytes,
        }
    }
}

/// Work for the storage thread. `C` is what a reply needs once the batch is
/// committed: the node to send it from (the thread), or nothing
/// ([`Dropboxes`], whose caller sends the replies).
pub(crate) enum Op<C = NodeRef> {
    Store {
        dropbox: [u8; 32],
        ciphertext: Vec<u8>,
        /// Where to send the SURB-ack once the commit is durable.
        ack: Option<StoreAck<C>>,
    },
    /// A store whose ack is a later [`Op::AckBatch`]'s.
    StoreBatched {
        dropbox: [u8; 32],
        ciphertext: Vec<u8>,
        batch: [u8; 16],
        slot: u8,
    },
    /// Answer which slots of `batch` are stored, once those before it in
    /// the queue are committed (waiting up to `wait_ms` for the rest).
    AckBatch {
        batch: [u8; 16],
        count: u8,
        wait_ms: u32,
        ack: StoreAck<C>,
    },
    Fetch {
        req: FetchRequest,
        node: C,
    },
    Expire,
    /// Commit what came before, then end the thread.
    Stop,
    /// Test hook: tells when everything before it is committed.
    #[allow(dead_code)]
    Sync(std::sync::mpsc::Sender<()>),
}

/// A store's SURB-ack: sent only after the commit that holds the message.
pub(crate) struct StoreAck<C = NodeRef> {
    pub reply_epoch: u64,
    pub surb: Vec<u8>,
    pub node: C,
}

/// Why a store was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The dropbox holds `dropbox_max_messages` already.
    BoxQuota,
    /// All dropboxes together would exceed `storage_max_bytes`.
    GatewayQuota,
    /// The disk's free space would fall below `storage_reserve_bytes`.
    DiskReserve,
    /// The database cannot write (a disk error); the gateway is reopening it.
    Unavailable,
}

impl Refusal {
    /// What the sender is told.
    pub fn told(self) -> protocol::messages::StoreRefused {
        use protocol::messages::StoreRefused as S;
        match self {
            Refusal::BoxQuota => S::BoxFull,
            Refusal::GatewayQuota => S::GatewayFull,
            Refusal::DiskReserve => S::DiskReserve,
            Refusal::Unavailable => S::Unavailable,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BoxQuota => "box_quota",
            Refusal::GatewayQuota => "gateway_quota",
            Refusal::DiskReserve => "disk_reserve",
            Refusal::Unavailable => "unavailable",
        }
    }
}

/// A storage error (local fault: disk, corruption).
#[derive(Debug, thiserror::Error)]
#[error("dropbox store {path}: {reason}")]
pub struct StorageError {
    path: PathBuf,
    reason: String,
}

pub(crate) struct Storage {
    /// `None` while a failed database is being reopened.
    db: Option<Database>,
    path: PathBuf,
    limits: Limits,
    /// In memory: no disk to fill, nothing to reopen.
    memory: bool,
    /// Checks the disk's free space before storing (off only in a test
    /// that makes a commit fail).
    check_free: bool,
}

use net::now_ms;

/// What one fetch yields, before its replies are built.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Fetched {
    pub messages: Vec<(u64, Vec<u8>)>,
    pub remaining: u64,
    /// For `list` fetches: seqs above the cursor, and how many follow them.
    pub listing: Option<(Vec<u64>, u64)>,
    /// Refused (nothing read, nothing deleted): why, and the gateway's
    /// clock in Unix seconds.
    pub refused: Option<(RefusalReason, u64)>,
}

impl Storage {
    /// The database file at `path` (created, private to the gateway's user).
    pub(crate) fn open(path: &Path, limits: Limits) -> Result<Self, StorageError> {
        let err = |e: &dyn std::fmt::Display| StorageError {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            net::identity::create_private_dir(dir).map_err(|e| err(&e))?;
        }
        // Readable by the gateway's user only: it holds everyone's ciphertexts.
        net::identity::create_private_file(path).map_err(|e| err(&e))?;
        let db = Database::create(path).map_err(|e| err(&e))?;
        Self::with_database(db, path.to_owned(), limits, false)
    }

    /// Closes the database and opens it again: after a failed commit (a
    /// full disk, an I/O error) redb refuses every later write on the same
    /// handle, even once space is back. Opening checks the file and
    /// repairs what the failed commit left (its last durable commit wins).
    pub(crate) fn reopen(&mut self) -> Result<(), StorageError> {
        if self.memory {
            return Ok(());
        }
        self.db = None; // the file lock goes with the handle
        let db = Database::create(&self.path).map_err(|e| self.err(e))?;
        self.db = Some(db);
        Ok(())
    }

    fn db(&self) -> Result<&Database, StorageError> {
        self.db
            .as_ref()
            .ok_or_else(|| self.err("the database is being reopened"))
    }

    /// Bytes free on the database's filesystem for the gateway's user, if
    /// it can tell.
    fn free_bytes(&self) -> Option<u64> {
        if self.memory || !self.check_free {
            return None;
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let st = rustix::fs::statvfs(dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// A database in memory: the same tables and rules, nothing on disk
    /// (simulations and tests).
    pub(crate) fn in_memory(limits: Limits) -> Result<Self, StorageError> {
        let path = PathBuf::from(":memory:");
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StorageError {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Self::with_database(db, path, limits, true)
    }

    /// Creates the tables if missing, and the expiry index of a database
    /// made before it existed.
    fn with_database(
        db: Database,
        path: PathBuf,
        limits: Limits,
        memory: bool,
    ) -> Result<Self, StorageError> {
        let s = Self {
            db: Some(db),
            path,
            limits,
            memory,
            check_free: true,
        };
        let tx = s.db()?.begin_write().map_err(|e| s.err(e))?;
        {
            let messages = tx.open_table(MESSAGES).map_err(|e| s.err(e))?;
            tx.open_table(BOXES).map_err(|e| s.err(e))?;
            tx.open_table(TOTALS).map_err(|e| s.err(e))?;
            let mut expiry = tx.open_table(EXPIRY).map_err(|e| s.err(e))?;
            if expiry.is_empty().map_err(|e| s.err(e))? {
                for r in messages.iter().map_err(|e| s.err(e))? {
                    let (k, v) = r.map_err(|e| s.err(e))?;
                    let (id, seq) = k.value();
                    expiry
                        .insert((stored_at(v.value()), id, seq), ())
                        .map_err(|e| s.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| s.err(e))?;
        Ok(s)
    }

    fn err(&self, e: impl std::fmt::Display) -> StorageError {
        StorageError {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Runs one batch of operations in one durable transaction, at `now_ms`
    /// (Unix ms: fetch freshness, stored-at times, expiry). Returns, per op,
    /// what to do after the commit; if the transaction fails, the error and
    /// the ops untouched (nothing of the batch is stored or deleted).
    #[allow(clippy::type_complexity)]
    pub(crate) fn apply<C>(
        &self,
        ops: Vec<Op<C>>,
        now_ms: u64,
        metrics: &GatewayMetrics,
    ) -> Result<Vec<After<C>>, (StorageError, Vec<Op<C>>)> {
        match self.run_batch(&ops, now_ms, metrics) {
            Ok(outcomes) => Ok(ops
                .into_iter()
                .zip(outcomes)
                .filter_map(|(op, out)| match (op, out) {
                    (Op::Store { ack, .. }, Outcome::Stored(r)) => Some(After::Stored(r, ack)),
                    (Op::StoreBatched { batch, slot, .. }, Outcome::Stored(r)) => {
                        Some(After::BatchStored(r, batch, slot))
                    }
                    (
                        Op::AckBatch {
                            batch,
                            count,
                            wait_ms,
                            ack,
                        },
                        _,
                    ) => Some(After::AckBatch {
                        batch,
                        count,
                        wait_ms,
                        ack,
                    }),
                    (Op::Fetch { req, node }, Outcome::Fetched(fetched)) => Some(After::Reply {
                        req: Box::new(req),
                        node,
                        fetched,
                    }),
                    (Op::Expire, Outcome::Expired(n)) => Some(After::Expired(n)),
                    (Op::Sync(tx), _) => Some(After::Sync(tx)),
                    _ => None,
                })
                .collect()),
            Err(e) => Err((e, ops)),
        }
    }

    /// [`Self::apply`], and if the transaction fails: count it, reopen the
    /// database (retrying until it opens), and do what a database that
    /// cannot write still can for the batch ([`Self::degraded`]). The
    /// storage thread's step; `storage_ok` says which way it went.
    pub(crate) fn apply_or_recover<C>(
        &mut self,
        ops: Vec<Op<C>>,
        now_ms: u64,
        metrics: &GatewayMetrics,
    ) -> Vec<After<C>> {
        match self.apply(ops, now_ms, metrics) {
            Ok(a) => {
                if metrics.storage_ok.get() == 0 {
                    tracing::warn!("dropbox storage writes again");
                }
                metrics.storage_ok.set(1);
                a
            }
            Err((e, ops)) => {
                // Nothing in this batch is stored or deleted. redb refuses
                // every later write on this handle: open the file again.
                tracing::error!(error = %e, "dropbox commit failed; reopening the database");
                metrics.storage_ok.set(0);
                metrics.storage_failures.inc();
                let mut wait = Duration::from_millis(100);
                while let Err(e) = self.reopen() {
                    tracing::error!(error = %e, "cannot reopen the dropbox database; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                self.degraded(ops, now_ms)
            }
        }
    }

    /// What a batch whose transaction failed still does, on a database
    /// that cannot write: stores refused (`Unavailable`), fetches answered
    /// from a read transaction without deleting (an empty answer if even
    /// reading fails), expiry put off.
    pub(crate) fn degraded<C>(&self, ops: Vec<Op<C>>, now_ms: u64) -> Vec<After<C>> {
        ops.into_iter()
            .filter_map(|op| match op {
                Op::Store { ack, .. } => Some(After::Stored(Err(Refusal::Unavailable), ack)),
                Op::StoreBatched { batch, slot, .. } => {
                    Some(After::BatchStored(Err(Refusal::Unavailable), batch, slot))
                }
                Op::AckBatch {
                    batch,
                    count,
                    wait_ms,
                    ack,
                } => Some(After::AckBatch {
                    batch,
                    count,
                    wait_ms,
                    ack,
                }),
                Op::Fetch { req, node } => {
                    let refused = self.refusal(&req, now_ms);
                    let fetched = match refused {
                        None => self.fetch_read_only(&req).unwrap_or_default(),
                        Some(why) => Fetched {
                            refused: Some((why, now_ms / 1000)),
                            ..Fetched::default()
                        },
                    };
                    Some(After::Reply {
                        req: Box::new(req),
                        node,
                        fetched,
                    })
                }
                Op::Expire => Some(After::Expired(0)),
                Op::Sync(tx) => Some(After::Sync(tx)),
                Op::Stop => None,
            })
            .collect()
    }

    /// Why a fetch at `now_ms` is refused, if it is: its timestamp outside
    /// `fetch_max_age_secs` of the gateway's clock, or a capability that
    /// does not verify.
    fn refusal(&self, req: &FetchRequest, now_ms: u64) -> Option<RefusalReason> {
        if req.timestamp_ms.abs_diff(now_ms) > self.limits.fetch_max_age_ms {
            Some(RefusalReason::Time)
        } else if !req.authorised() {
            Some(RefusalReason::Capability)
        } else {
            None
        }
    }

    fn run_batch<C>(
        &self,
        ops: &[Op<C>],
        now_ms: u64,
        metrics: &GatewayMetrics,
    ) -> Result<Vec<Outcome>, StorageError> {
        let tx = self.db()?.begin_write().map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(ops.len());
        // What this batch may still write before the disk reserve: checked
        // once per batch (a statvfs), then counted down.
        let mut room = self
            .free_bytes()
            .map(|free| free.saturating_sub(self.limits.reserve_bytes));
        {
            let mut t = Tables {
                messages: tx.open_table(MESSAGES).map_err(|e| self.err(e))?,
                boxes: tx.open_table(BOXES).map_err(|e| self.err(e))?,
                totals: tx.open_table(TOTALS).map_err(|e| self.err(e))?,
                expiry: tx.open_table(EXPIRY).map_err(|e| self.err(e))?,
            };
            for op in ops {
                out.push(match op {
                    Op::Store {
                        dropbox,
                        ciphertext,
                        ..
                    }
                    | Op::StoreBatched {
                        dropbox,
                        ciphertext,
                        ..
                    } => {
                        Outcome::Stored(self.store(&mut t, dropbox, ciphertext, now_ms, &mut room)?)
                    }
                    Op::Fetch { req, .. } => {
                        let refused = self.refusal(req, now_ms);
                        metrics
                            .fetches
                            .with_label_values(&[if refused.is_none() {
                                "authorised"
                            } else {
                                "refused"
                            }])
                            .inc();
                        if refused == Some(RefusalReason::Time) {
                            metrics.fetches_refused_time.inc();
                        }
                        Outcome::Fetched(match refused {
                            None => self.fetch(&mut t, req)?,
                            // Nothing read, nothing deleted; the same
                            // answer whatever the box holds.
                            Some(why) => Fetched {
                                refused: Some((why, now_ms / 1000)),
                                ..Fetched::default()
                            },
                        })
                    }
                    Op::Expire => {
                        let n = self.expire(&mut t, now_ms)?;
                        if n > 0 {
                            tracing::info!(messages = n, "expired unfetched messages");
                        }
                        Outcome::Expired(n)
                    }
                    Op::Sync(_) | Op::Stop | Op::AckBatch { .. } => Outcome::Other,
                });
            }
            let bytes = t
                .totals
                .get("bytes")
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value());
            metrics.stored_bytes.set(bytes as i64);
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn store(
        &self,
        t: &mut Tables<'_>,
        dropbox: &[u8; 32],
        ciphertext: &[u8],
        now_ms: u64,
        room: &mut Option<u64>,
    ) -> Result<Result<u64, Refusal>, StorageError> {
        let (count, bytes) = t
            .boxes
            .get(dropbox)
            .map_err(|e| self.err(e))?
            .map_or((0, 0), |v| v.value());
        let total = t
            .totals
            .get("bytes")
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value());
        if count >= self.limits.box_messages {
            return Ok(Err(Refusal::BoxQuota));
        }
        let len = charge(ciphertext.len());
        if total.saturating_add(len) > self.limits.total_bytes {
            return Ok(Err(Refusal::GatewayQuota));
        }
        // A page or two of the B-trees may be copied per insert: room for
        // four times the row keeps the estimate on the safe side.
        let need = len.saturating_mul(4);
        match room {
            Some(r) if *r < need => return Ok(Err(Refusal::DiskReserve)),
            Some(r) => *r -= need,
            None => {}
        }
        let seq = t
            .totals
            .get("next_seq")
            .map_err(|e| self.err(e))?
            .map_or(1, |v| v.value());
        let mut value = Vec::with_capacity(8 + ciphertext.len());
        value.extend_from_slice(&now_ms.to_be_bytes());
        value.extend_from_slice(ciphertext);
        t.messages
            .insert((dropbox, seq), value.as_slice())
            .map_err(|e| self.err(e))?;
        t.expiry
            .insert((now_ms, dropbox, seq), ())
            .map_err(|e| self.err(e))?;
        t.boxes
            .insert(dropbox, (count + 1, bytes.saturating_add(len)))
            .map_err(|e| self.err(e))?;
        t.totals
            .insert("next_seq", seq.saturating_add(1))
            .map_err(|e| self.err(e))?;
        t.totals
            .insert("bytes", total.saturating_add(len))
            .map_err(|e| self.err(e))?;
        Ok(Ok(seq))
    }

    /// Deletes `seqs` of `dropbox`: (seq, stored_at_ms, bytes charged).
    fn remove(
        &self,
        t: &mut Tables<'_>,
        dropbox: &[u8; 32],
        seqs: &[(u64, u64, u64)],
    ) -> Result<(), StorageError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let freed: u64 = seqs.iter().map(|(_, _, len)| len).sum();
        for (seq, at, _) in seqs {
            t.messages
                .remove((dropbox, *seq))
                .map_err(|e| self.err(e))?;
            t.expiry
                .remove((*at, dropbox, *seq))
                .map_err(|e| self.err(e))?;
        }
        let Tables { boxes, totals, .. } = t;
        let (count, bytes) = boxes
            .get(dropbox)
            .map_err(|e| self.err(e))?
            .map_or((0, 0), |v| v.value());
        let count = count.saturating_sub(seqs.len() as u64);
        if count == 0 {
            boxes.remove(dropbox).map_err(|e| self.err(e))?;
        } else {
            boxes
                .insert(dropbox, (count, bytes.saturating_sub(freed)))
                .map_err(|e| self.err(e))?;
        }
        let total = totals
            .get("bytes")
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value());
        totals
            .insert("bytes", total.saturating_sub(freed))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn fetch(&self, t: &mut Tables<'_>, req: &FetchRequest) -> Result<Fetched, StorageError> {
        let id = &req.dropbox;
        // Delete what the client confirmed.
        let confirmed: Vec<(u64, u64, u64)> = t
            .messages
            .range((id, 0)..=(id, req.after_seq))
            .map_err(|e| self.err(e))?
            .filter_map(|r| r.ok())
            .map(|(k, v)| {
                let v = v.value();
                (k.value().1, stored_at(v), charge(v.len().saturating_sub(8)))
            })
            .collect();
        self.remove(t, id, &confirmed)?;
        self.window(&t.messages, &t.boxes, req)
    }

    /// The answer to `req`, read from the tables: the messages above
    /// `max(after_seq, cursor)` (one per SURB but the listing's), how many
    /// more there are, and the listing if asked. Deletes nothing, so it
    /// serves both a normal fetch (after its confirmed messages went) and a
    /// database that cannot write.
    fn window(
        &self,
        messages: &impl ReadableTable<(&'static [u8; 32], u64), &'static [u8]>,
        boxes: &impl ReadableTable<&'static [u8; 32], (u64, u64)>,
        req: &FetchRequest,
    ) -> Result<Fetched, StorageError> {
        let id = &req.dropbox;
        let mut out = Fetched::default();
        if req.after_seq == u64::MAX {
            return Ok(out);
        }
        let start = req.after_seq.max(req.cursor);
        // What the box holds above `start` (messages at or below it, still
        // there when nothing could be deleted, are not counted).
        let held = boxes
            .get(id)
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value().0);
        let upto = messages
            .range((id, 0)..=(id, start))
            .map_err(|e| self.err(e))?
            .count() as u64;
        let above = held.saturating_sub(upto);
        let slots = req.surbs.len() - usize::from(req.list);
        let mut listing = Vec::new();
        // (Nothing lies above seq 2^64 − 1.)
        if let Some(from) = start.checked_add(1) {
            for r in messages
                .range((id, from)..=(id, u64::MAX))
                .map_err(|e| self.err(e))?
            {
                let (k, v) = r.map_err(|e| self.err(e))?;
                let seq = k.value().1;
                if out.messages.len() < slots {
                    out.messages
                        .push((seq, v.value().get(8..).unwrap_or_default().to_vec()));
                }
                if req.list && listing.len() < MAX_LISTING {
                    listing.push(seq);
                }
                if out.messages.len() == slots && (!req.list || listing.len() == MAX_LISTING) {
                    break;
                }
            }
        }
        out.remaining = above.saturating_sub(out.messages.len() as u64);
        if req.list {
            let after = above.saturating_sub(listing.len() as u64);
            out.listing = Some((listing, after));
        }
        Ok(out)
    }

    /// Deletes what was stored before `now_ms` − TTL, oldest first, at
    /// most [`EXPIRE_BATCH`] per call (the next call goes on): the time
    /// index finds them without reading the rest.
    fn expire(&self, t: &mut Tables<'_>, now_ms: u64) -> Result<usize, StorageError> {
        let cutoff = now_ms.saturating_sub(self.limits.ttl_ms);
        let mut old: std::collections::BTreeMap<[u8; 32], Vec<(u64, u64, u64)>> =
            Default::default();
        let mut n = 0;
        for r in t
            .expiry
            .range((0, &[0u8; 32], 0)..(cutoff, &[0u8; 32], 0))
            .map_err(|e| self.err(e))?
            .take(EXPIRE_BATCH)
        {
            let (k, _) = r.map_err(|e| self.err(e))?;
            let (at, id, seq) = k.value();
            let len = t
                .messages
                .get((id, seq))
                .map_err(|e| self.err(e))?
                .map_or(0, |v| charge(v.value().len().saturating_sub(8)));
            old.entry(*id).or_default().push((seq, at, len));
            n += 1;
        }
        for (id, seqs) in old {
            self.remove(t, &id, &seqs)?;
        }
        Ok(n)
    }

    /// Answers fetches from a read transaction, deleting nothing: what a
    /// gateway whose database cannot write still serves. The client
    /// confirms the same messages again in its next fetch.
    pub(crate) fn fetch_read_only(&self, req: &FetchRequest) -> Result<Fetched, StorageError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let messages = tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
        let boxes = tx.open_table(BOXES).map_err(|e| self.err(e))?;
        self.window(&messages, &boxes, req)
    }

    /// Messages held in `dropbox` (tests, [`Dropboxes`]).
    pub(crate) fn box_len(&self, dropbox: &[u8; 32]) -> u64 {
        let Ok(db) = self.db() else { return 0 };
        let Ok(tx) = db.begin_read() else {
            return 0;
        };
        let Ok(t) = tx.open_table(BOXES) else {
            return 0;
        };
        t.get(dropbox).ok().flatten().map_or(0, |v| v.value().0)
    }
}

/// What one op of a committed batch came to.
enum Outcome {
    Stored(Result<u64, Refusal>),
    Fetched(Fetched),
    Expired(usize),
    Other,
}

/// The tables of one write transaction.
struct Tables<'t> {
    messages: redb::Table<'t, (&'static [u8; 32], u64), &'static [u8]>,
    boxes: redb::Table<'t, &'static [u8; 32], (u64, u64)>,
    totals: redb::Table<'t, &'static str, u64>,
    expiry: redb::Table<'t, (u64, &'static [u8; 32], u64), ()>,
}

/// Messages one expiry pass deletes at most (one transaction stays short).
const EXPIRE_BATCH: usize = 10_000;

/// What a message of `ciphertext_len` bytes is charged.
fn charge(ciphertext_len: usize) -> u64 {
    ciphertext_len as u64 + ROW_OVERHEAD
}

/// A stored value's stored-at time (its first 8 bytes).
fn stored_at(value: &[u8]) -> u64 {
    let mut at = [0u8; 8];
    at.copy_from_slice(value.get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(at)
}

/// What remains to do once a batch is committed.
pub(crate) enum After<C = NodeRef> {
    Stored(Result<u64, Refusal>, Option<StoreAck<C>>),
    /// A batched store: (outcome, batch, slot).
    BatchStored(Result<u64, Refusal>, [u8; 16], u8),
    AckBatch {
        batch: [u8; 16],
        count: u8,
        wait_ms: u32,
        ack: StoreAck<C>,
    },
    Reply {
        req: Box<FetchRequest>,
        node: C,
        fetched: Fetched,
    },
    /// Messages an `Expire` deleted.
    Expired(usize),
    Sync(std::sync::mpsc::Sender<()>),
}

/// Counts a store's outcome once its batch is committed.
fn count_store(metrics: &GatewayMetrics, r: &Result<u64, Refusal>) {
    match r {
        Ok(_) => metrics.stored.inc(),
        Err(r) => metrics.refused.with_label_values(&[r.label()]).inc(),
    }
}

/// Builds the replies of one fetch: exactly one per SURB.
pub(crate) fn replies(req: &FetchRequest, fetched: &Fetched) -> Vec<Vec<u8>> {
    if let Some((reason, gateway_s)) = fetched.refused {
        let r = Refused { reason, gateway_s }.encode();
        return vec![r; req.surbs.len()];
    }
    let seqs: Vec<u64> = fetched.messages.iter().map(|(s, _)| *s).collect();
    let remaining = u32::try_from(fetched.remaining).unwrap_or(u32::MAX);
    let last = req.surbs.len().saturating_sub(1);
    (0..req.surbs.len())
        .map(|i| {
            if i == last
                && let Some((seqs, after)) = &fetched.listing
            {
                return Listing {
                    seqs: seqs.clone(),
                    remaining: u32::try_from(*after).unwrap_or(u32::MAX),
                }
                .encode()
                .unwrap_or_default();
            }
            FetchReply {
                seqs: seqs.clone(),
                remaining,
                message: fetched.messages.get(i).cloned(),
            }
            .encode()
            .unwrap_or_default()
        })
        .collect()
}

/// A gateway's dropboxes without the gateway around them: the storage
/// thread's own code and rules (quotas, the seq counter, the fetch window
/// with cursor and listing, the capability and `fetch_max_age_secs` check,
/// deletes by `after_seq`, the TTL) on an in-memory redb, one transaction
/// per call, with the time passed in. Nothing is sent: [`Dropboxes::fetch`]
/// returns the reply bodies, and the caller sends each through its SURB (to
/// a layer-1 first hop only) as the storage thread does. It exists so that
/// a simulation on a virtual clock runs the gateway's own storage code.
pub struct Dropboxes {
    storage: Storage,
    metrics: GatewayMetrics,
    batches: std::sync::Mutex<Batches<(u64, Vec<u8>)>>,
}

/// A reply for a [`Dropboxes`] caller to send: (reply epoch, SURB, body).
pub type SurbReply = (u64, Vec<u8>, Vec<u8>);

impl std::fmt::Debug for Dropboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dropboxes")
            .field("limits", &self.storage.limits)
            .finish_non_exhaustive()
    }
}

impl Dropboxes {
    /// Empty dropboxes with the limits of a gateway configured with `cfg`
    /// (`dropbox_ttl_secs`, `dropbox_max_messages`, `storage_max_bytes`,
    /// `fetch_max_age_secs`; the rest is ignored).
    pub fn new(cfg: &GatewayConfig) -> Result<Self, StorageError> {
        Ok(Self {
            storage: Storage::in_memory(Limits::from_config(cfg))?,
            metrics: GatewayMetrics::new(&prometheus::Registry::new()),
            batches: std::sync::Mutex::new(Batches::new(MAX_BATCHES)),
        })
    }

    /// Stores `ciphertext` in `dropbox` at `now_ms`: its seq, or why not.
    /// The outer error is the database's (memory only: a bug, not a
    /// condition).
    pub fn store(
        &self,
        dropbox: &[u8; 32],
        ciphertext: &[u8],
        now_ms: u64,
    ) -> Result<Result<u64, Refusal>, StorageError> {
        let op = Op::<()>::Store {
            dropbox: *dropbox,
            ciphertext: ciphertext.to_vec(),
            ack: None,
        };
        let r = match self
            .storage
            .apply(vec![op], now_ms, &self.metrics)
            .map_err(|(e, _)| e)?
            .pop()
        {
            Some(After::Stored(r, _)) => r,
            _ => return Err(self.storage.err("store gave no result")),
        };
        count_store(&self.metrics, &r);
        Ok(r)
    }

    /// Answers `req` at `now_ms` (the gateway's clock, against which the
    /// request's timestamp must be within `fetch_max_age_secs`): deletes what
    /// it confirms, and returns exactly one reply body per SURB, in SURB
    /// order, as the gateway sends them. A refused fetch gets `n` copies of
    /// a `Refused` reply (protocol.md §12.2).
    pub fn fetch(&self, req: &FetchRequest, now_ms: u64) -> Result<Vec<Vec<u8>>, StorageError> {
        let op = Op::Fetch {
            req: req.clone(),
            node: (),
        };
        match self
            .storage
            .apply(vec![op], now_ms, &self.metrics)
            .map_err(|(e, _)| e)?
            .pop()
        {
            Some(After::Reply { req, fetched, .. }) => Ok(replies(&req, &fetched)),
            _ => Err(self.storage.err("fetch gave no result")),
        }
    }

    /// A batched store (slot `slot` of `batch`): stored as
    /// [`Self::store`] does, and returns the batch acks that it completes.
    pub fn store_batched(
        &self,
        dropbox: &[u8; 32],
        batch: [u8; 16],
        slot: u8,
        ciphertext: &[u8],
        now_ms: u64,
    ) -> Result<(Result<u64, Refusal>, Vec<SurbReply>), StorageError> {
        let r = self.store(dropbox, ciphertext, now_ms)?;
        let outcome = r.map(|_| ()).map_err(Refusal::told);
        let answers = self.batch_table().stored(batch, slot, outcome, now_ms);
        Ok((r, surb_replies(answers)))
    }

    /// A batch acknowledgement request: its answer if it is due now (the
    /// batch is complete, or `wait_ms` is 0); else it waits for
    /// [`Self::batch_acks_due`].
    pub fn ack_batch(
        &self,
        batch: [u8; 16],
        count: u8,
        wait_ms: u32,
        reply_epoch: u64,
        surb: Vec<u8>,
        now_ms: u64,
    ) -> Vec<SurbReply> {
        let answers = self
            .batch_table()
            .ask(batch, count, wait_ms, (reply_epoch, surb), now_ms);
        surb_replies(answers)
    }

    /// The batch acks whose wait ended by `now_ms`.
    pub fn batch_acks_due(&self, now_ms: u64) -> Vec<SurbReply> {
        surb_replies(self.batch_table().due(now_ms))
    }

    /// When [`Self::batch_acks_due`] next has one to give.
    pub fn next_batch_ack_due(&self) -> Option<u64> {
        self.batch_table().next_due()
    }

    fn batch_table(&self) -> std::sync::MutexGuard<'_, Batches<(u64, Vec<u8>)>> {
        self.batches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes every message stored before `now_ms` − TTL; returns how many.
    pub fn expire(&self, now_ms: u64) -> Result<usize, StorageError> {
        match self
            .storage
            .apply(vec![Op::<()>::Expire], now_ms, &self.metrics)
            .map_err(|(e, _)| e)?
            .pop()
        {
            Some(After::Expired(n)) => Ok(n),
            _ => Err(self.storage.err("expire gave no result")),
        }
    }

    /// Messages held in `dropbox`.
    pub fn box_len(&self, dropbox: &[u8; 32]) -> u64 {
        self.storage.box_len(dropbox)
    }

    /// The gateway's storage series as the storage thread counts them
    /// (`stored`, `refused`, `fetches{outcome}`, `stored_bytes`).
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }
}

fn surb_replies(answers: Vec<((u64, Vec<u8>), protocol::messages::BatchAck)>) -> Vec<SurbReply> {
    answers
        .into_iter()
        .map(|((epoch, surb), a)| (epoch, surb, a.body()))
        .collect()
}

/// The storage thread: batches ops, commits, then sends replies.
pub(crate) fn run(
    mut storage: Storage,
    rx: crossbeam_channel::Receiver<Op>,
    metrics: GatewayMetrics,
    rt: tokio::runtime::Handle,
) {
    const BATCH: usize = 256;
    // Replies go out on links, whose tasks live on the node's runtime.
    let _guard = rt.enter();
    let mut batches: Batches<StoreAck> = Batches::new(MAX_BATCHES);
    let send_batch_acks = |answers: Vec<(StoreAck, protocol::messages::BatchAck)>| {
        for (a, ack) in answers {
            if reply(&a.node, a.reply_epoch, &a.surb, &ack.body()) {
                metrics.batch_acks.inc();
            }
        }
    };
    let mut stopping = false;
    while !stopping {
        // Wake for the first batch request whose wait ends, if one waits.
        let first = match batches.next_due() {
            None => rx.recv().map_err(|_| ()),
            Some(due) => {
                let wait = Duration::from_millis(due.saturating_sub(now_ms()));
                match rx.recv_timeout(wait) {
                    Ok(op) => Ok(op),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        send_batch_acks(batches.due(now_ms()));
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(()),
                }
            }
        };
        let Ok(first) = first else { return };
        let mut ops = vec![first];
        while ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        stopping = ops.iter().any(|o| matches!(o, Op::Stop));
        metrics.storage_queue.sub(ops.len() as i64);
        let started = Instant::now();
        let now = now_ms();
        let after = storage.apply_or_recover(ops, now, &metrics);
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        for a in after {
            match a {
                After::Stored(r, ack) => {
                    count_store(&metrics, &r);
                    // Durable now: tell the sender, through its SURB. Refused:
                    // tell it why, so it reports at once instead of retrying.
                    if let Some(a) = ack {
                        let body = match r {
                            Ok(_) => protocol::messages::ACK_BODY.to_vec(),
                            Err(why) => why.told().body(),
                        };
                        if reply(&a.node, a.reply_epoch, &a.surb, &body) && r.is_ok() {
                            metrics.acks.inc();
                        }
                    }
                }
                After::BatchStored(r, batch, slot) => {
                    count_store(&metrics, &r);
                    let outcome = r.map(|_| ()).map_err(Refusal::told);
                    send_batch_acks(batches.stored(batch, slot, outcome, now));
                }
                After::AckBatch {
                    batch,
                    count,
                    wait_ms,
                    ack,
                } => send_batch_acks(batches.ask(batch, count, wait_ms, ack, now)),
                After::Reply { req, node, fetched } => {
                    for (surb, body) in req.surbs.iter().zip(replies(&req, &fetched)) {
                        if reply(&node, req.reply_epoch, surb, &body) {
                            metrics.replies.inc();
                        }
                    }
                }
                After::Expired(_) => {}
                After::Sync(tx) => {
                    let _ = tx.send(());
                }
            }
        }
        send_batch_acks(batches.due(now_ms()));
        metrics.batches_waiting.set(batches.waiting() as i64);
    }
}

/// Sends `body` through `surb` (built for `epoch`'s keys): only to a
/// layer-1 mix node of that epoch, like every packet entering the mixnet, so
/// that a fetch cannot aim the gateway's replies at any other node. False if
/// it was not sent (counted).
fn reply(node: &NodeRef, epoch: u64, surb: &[u8], body: &[u8]) -> bool {
    match protocol::packet::use_surb(surb, body) {
        Ok((first_hop, packet)) if node.is_first_layer(epoch, &first_hop) => {
            node.forward(epoch, first_hop, &packet)
        }
        Ok(_) => {
            node.metrics().drop("bad_first_hop");
            false
        }
        Err(_) => {
            node.metrics().drop("malformed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::dropbox::PairSecret;
    use protocol::packet::SURB_LEN;

    fn limits() -> Limits {
        Limits {
            ttl_ms: 1000,
            box_messages: 3,
            total_bytes: 10_000,
            fetch_max_age_ms: 600_000,
            reserve_bytes: 0,
        }
    }

    fn open(dir: &tempfile::TempDir) -> Storage {
        Storage::open(&dir.path().join("d.redb"), limits()).unwrap()
    }

    fn metrics() -> GatewayMetrics {
        GatewayMetrics::new(&prometheus::Registry::new())
    }

    fn store(s: &Storage, id: [u8; 32], ct: &[u8], now: u64) -> Result<u64, Refusal> {
        let m = metrics();
        match s
            .apply(
                vec![Op::<()>::Store {
                    dropbox: id,
                    ciphertext: ct.to_vec(),
                    ack: None,
                }],
                now,
                &m,
            )
            .map_err(|(e, _)| e)
            .unwrap()
            .pop()
        {
            Some(After::Stored(r, _)) => r,
            _ => panic!("no result"),
        }
    }

    /// Runs a fetch directly against the tables (no node needed).
    fn fetch(s: &Storage, req: &FetchRequest) -> Fetched {
        let tx = s.db().unwrap().begin_write().unwrap();
        let f = {
            let mut t = Tables {
                messages: tx.open_table(MESSAGES).unwrap(),
                boxes: tx.open_table(BOXES).unwrap(),
                totals: tx.open_table(TOTALS).unwrap(),
                expiry: tx.open_table(EXPIRY).unwrap(),
            };
            let ok = req.authorised();
            if ok {
                s.fetch(&mut t, req).unwrap()
            } else {
                Fetched::default()
            }
        };
        tx.commit().unwrap();
        f
    }

    fn request(secret: u8, after: u64) -> FetchRequest {
        let b = PairSecret::from_bytes([secret; 32]).dropbox(&[1; 32], &[2; 32], 0);
        FetchRequest::new_signed(&b, after, 0, 0, vec![vec![0; SURB_LEN]; 2])
    }

    #[test]
    fn store_fetch_confirm_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let req = request(1, 0);
        let id = req.dropbox;
        let a = store(&s, id, b"one", 0).unwrap();
        let b = store(&s, id, b"two", 0).unwrap();
        let c = store(&s, id, b"three", 0).unwrap();
        assert!(a < b && b < c);
        let f = fetch(&s, &req);
        assert_eq!(f.messages, vec![(a, b"one".to_vec()), (b, b"two".to_vec())]);
        assert_eq!(f.remaining, 1);
        // Confirming up to b deletes one and two only.
        let f = fetch(&s, &request(1, b));
        assert_eq!(f.messages, vec![(c, b"three".to_vec())]);
        assert_eq!(s.box_len(&id), 1);
        let f = fetch(&s, &request(1, c));
        assert!(f.messages.is_empty());
        assert_eq!(s.box_len(&id), 0);
    }

    #[test]
    fn cursor_and_listing_name_messages_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(
            &dir.path().join("d.redb"),
            Limits {
                box_messages: 100,
                ..limits()
            },
        )
        .unwrap();
        let id = request(1, 0).dropbox;
        let seqs: Vec<u64> = (0..10)
            .map(|i| store(&s, id, format!("m{i}").as_bytes(), 0).unwrap())
            .collect();
        let b = PairSecret::from_bytes([1; 32]).dropbox(&[1; 32], &[2; 32], 0);
        let listed = FetchRequest::new_signed_at(
            &b,
            seqs[1],
            seqs[3],
            true,
            0,
            0,
            vec![vec![0; SURB_LEN]; 2],
        );
        let f = fetch(&s, &listed);
        // Confirmed 0–1 are deleted; answers start above the cursor (m4), one
        // message and then the listing of everything above the cursor.
        assert_eq!(f.messages, vec![(seqs[4], b"m4".to_vec())]);
        assert_eq!(f.remaining, 5);
        assert_eq!(f.listing, Some((seqs[4..].to_vec(), 0)));
        assert_eq!(s.box_len(&id), 8);
        let replies = replies(&listed, &f);
        assert_eq!(
            Listing::decode(&replies[1]).unwrap().seqs,
            seqs[4..].to_vec()
        );
        // A fetch confirming less than an earlier one deletes nothing more,
        // and the cursor still names the same messages.
        let again = FetchRequest::new_signed_at(
            &b,
            seqs[0],
            seqs[3],
            false,
            0,
            0,
            vec![vec![0; SURB_LEN]; 1],
        );
        assert_eq!(fetch(&s, &again).messages, vec![(seqs[4], b"m4".to_vec())]);
    }

    #[test]
    fn wrong_capability_looks_empty_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let good = request(1, u64::MAX - 1);
        store(&s, good.dropbox, b"secret", 0).unwrap();
        // Right box id, but signed by a key that does not hash to it.
        let mut forged = request(2, u64::MAX - 1);
        forged.dropbox = good.dropbox;
        let f = fetch(&s, &forged);
        let empty = fetch(&s, &request(3, 0));
        assert_eq!(f, empty);
        assert_eq!(replies(&forged, &f), replies(&request(3, 0), &empty));
        assert_eq!(s.box_len(&good.dropbox), 1, "nothing deleted");
    }

    #[test]
    fn quotas_refuse_without_touching_other_boxes() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let (x, y) = ([1u8; 32], [2u8; 32]);
        for _ in 0..3 {
            store(&s, x, b"m", 0).unwrap();
        }
        assert_eq!(store(&s, x, b"m", 0), Err(Refusal::BoxQuota));
        assert!(store(&s, y, b"m", 0).is_ok(), "another box still accepts");
        assert_eq!(s.box_len(&x), 3);
        assert_eq!(
            store(&s, y, &vec![0; 10_000], 0),
            Err(Refusal::GatewayQuota)
        );
        assert_eq!(s.box_len(&y), 1);
    }

    /// The in-memory `Dropboxes` run the same rules, with the freshness
    /// check against the caller's clock.
    #[test]
    fn dropboxes_in_memory_apply_the_same_rules() {
        let cfg = GatewayConfig {
            dropbox_max_messages: 2,
            dropbox_ttl_secs: 60,
            fetch_max_age_secs: 600,
            ..GatewayConfig::default()
        };
        let d = Dropboxes::new(&cfg).unwrap();
        let b = PairSecret::from_bytes([1; 32]).dropbox(&[1; 32], &[2; 32], 0);
        let now = 1_000_000_000;
        let a = d.store(&b.id, b"one", now).unwrap().unwrap();
        let c = d.store(&b.id, b"two", now + 1).unwrap().unwrap();
        assert!(a < c);
        assert_eq!(
            d.store(&b.id, b"three", now).unwrap(),
            Err(Refusal::BoxQuota)
        );
        let surbs = vec![vec![0; SURB_LEN]; 2];
        // 600 s behind the gateway's clock: still fresh. One ms more (either
        // way): refused for its time, answered with a refusal that carries
        // the gateway's clock, nothing deleted.
        let edge = FetchRequest::new_signed_at(&b, a, 0, false, now - 600_000, 0, surbs.clone());
        for ts in [now - 600_001, now + 600_001] {
            let stale = FetchRequest::new_signed_at(&b, c, 0, true, ts, 0, surbs.clone());
            let r = d.fetch(&stale, now).unwrap();
            assert_eq!(r.len(), 2);
            for body in &r {
                let refused = Refused::decode(body).expect("a refusal, not an empty box");
                assert_eq!(refused.reason, RefusalReason::Time);
                assert_eq!(refused.gateway_s, now / 1000);
                assert!(FetchReply::decode(body).is_err() && Listing::decode(body).is_err());
            }
        }
        assert_eq!(d.box_len(&b.id), 2);
        // A forged capability is refused as such, and the answer is the same
        // for a full box and an empty one.
        let mut forged = FetchRequest::new_signed_at(&b, c, 0, false, now, 0, surbs.clone());
        forged.after_seq += 1;
        let empty = PairSecret::from_bytes([9; 32]).dropbox(&[1; 32], &[2; 32], 0);
        let mut forged_empty =
            FetchRequest::new_signed_at(&empty, 0, 0, false, now, 0, surbs.clone());
        forged_empty.after_seq += 1;
        let r1 = d.fetch(&forged, now).unwrap();
        assert_eq!(r1, d.fetch(&forged_empty, now).unwrap());
        assert_eq!(
            Refused::decode(&r1[0]).unwrap().reason,
            RefusalReason::Capability
        );
        assert_eq!(d.box_len(&b.id), 2);
        let r = d.fetch(&edge, now).unwrap();
        assert_eq!(r.len(), 2);
        let first = FetchReply::decode(&r[0]).unwrap();
        assert_eq!(first.seqs, vec![c]);
        assert_eq!(first.message, Some((c, b"two".to_vec())));
        assert_eq!(d.box_len(&b.id), 1, "after_seq = a deleted one");
        assert_eq!(d.metrics().fetches_refused_time.get(), 2);
        assert_eq!(d.metrics().fetches.with_label_values(&["refused"]).get(), 4);
        assert_eq!(d.metrics().stored.get(), 2);
        assert_eq!(d.expire(now + 60_000).unwrap(), 0);
        assert_eq!(d.expire(now + 60_002).unwrap(), 1);
        assert_eq!(d.box_len(&b.id), 0);
    }

    #[test]
    fn messages_expire_after_the_ttl_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(&dir);
            store(&s, [1; 32], b"old", 0).unwrap();
            store(&s, [1; 32], b"new", 900).unwrap();
        }
        let s = open(&dir);
        assert_eq!(s.box_len(&[1; 32]), 2, "durable across reopen");
        s.apply(vec![Op::<()>::Expire], 1500, &metrics())
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(s.box_len(&[1; 32]), 1);
        // Sequence numbers are never reused.
        let next = store(&s, [1; 32], b"x", 1500).unwrap();
        assert!(next > 2);
    }

    /// A tmpfs mounted for one test, unmounted when dropped.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        /// `None` if this user cannot mount (not root): the test says so.
        fn mount(at: &Path, size: &str) -> Option<Self> {
            let uid = std::process::Command::new("id").arg("-u").output().ok()?;
            if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
                return None;
            }
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(at)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "root, but cannot mount a tmpfs at {}", at.display());
            Some(Self(at.to_owned()))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    fn store_op(id: [u8; 32], i: u32) -> Op<()> {
        let mut ct = vec![0u8; 1500];
        ct[..4].copy_from_slice(&i.to_be_bytes());
        Op::Store {
            dropbox: id,
            ciphertext: ct,
            ack: None,
        }
    }

    fn fetch_op(req: FetchRequest) -> Op<()> {
        Op::Fetch { req, node: () }
    }

    /// The disk fills up under a gateway (another process takes the rest):
    /// its commits fail, it reopens the database, refuses stores with a
    /// reason, still answers fetches (read-only), and when space is back
    /// it writes again without a restart. Every store it acknowledged is
    /// there afterwards.
    #[test]
    fn a_full_disk_is_survived_and_nothing_acked_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let Some(fs) = Tmpfs::mount(dir.path(), "6m") else {
            eprintln!("SKIPPED a_full_disk_is_survived: needs root to mount a tmpfs");
            return;
        };
        let lim = Limits {
            ttl_ms: 3_600_000,
            box_messages: 1_000_000,
            total_bytes: 1 << 40,
            fetch_max_age_ms: 600_000,
            reserve_bytes: 0,
        };
        let mut s = Storage::open(&fs.0.join("d.redb"), lim).unwrap();
        let m = metrics();
        let box_of = PairSecret::from_bytes([9; 32]).dropbox(&[1; 32], &[2; 32], 0);
        let id = box_of.id;
        let mut acked = std::collections::BTreeSet::new();
        let mut n = 0u32;
        let mut batch = |s: &mut Storage, acked: &mut std::collections::BTreeSet<u64>| {
            let ops: Vec<Op<()>> = (0..8)
                .map(|_| {
                    n += 1;
                    store_op(id, n)
                })
                .collect();
            let mut refused = Vec::new();
            for a in s.apply_or_recover(ops, 1_000, &m) {
                match a {
                    After::Stored(Ok(seq), _) => {
                        acked.insert(seq);
                    }
                    After::Stored(Err(r), _) => refused.push(r),
                    _ => unreachable!(),
                }
            }
            refused
        };
        for _ in 0..20 {
            assert!(batch(&mut s, &mut acked).is_empty());
        }
        let before = acked.len();
        // Another process takes every free byte.
        let filler = fs.0.join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = vec![1u8; 64 * 1024];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.sync_all();
        }
        // The free-space check refuses stores at once, with a reason.
        assert_eq!(batch(&mut s, &mut acked), vec![Refusal::DiskReserve; 8]);
        assert_eq!(m.storage_failures.get(), 0);
        assert_eq!(m.storage_ok.get(), 1);
        let req = FetchRequest::new_signed(&box_of, 0, 1_000, 0, vec![vec![0; SURB_LEN]; 4]);
        match s.apply_or_recover(vec![fetch_op(req)], 1_000, &m).pop() {
            Some(After::Reply { fetched, .. }) => assert_eq!(fetched.messages.len(), 4),
            _ => unreachable!(),
        }
        // Without it (space taken between the check and the commit), stores
        // go on into redb's free pages until a commit fails.
        s.check_free = false;
        let mut refusals = Vec::new();
        for _ in 0..200 {
            refusals = batch(&mut s, &mut acked);
            if m.storage_failures.get() > 0 {
                break;
            }
        }
        let used = std::fs::metadata(fs.0.join("d.redb")).map(|m| m.len());
        let out = std::process::Command::new("df")
            .arg(&fs.0)
            .output()
            .unwrap();
        assert!(
            m.storage_failures.get() > 0,
            "the disk never filled: {} acked, db {used:?}, {}",
            acked.len(),
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(m.storage_ok.get(), 0);
        assert!(!refusals.is_empty() && refusals.iter().all(|r| *r == Refusal::Unavailable));
        // While full: stores refused with a reason, fetches answered.
        let refused = batch(&mut s, &mut acked);
        assert_eq!(refused, vec![Refusal::Unavailable; 8]);
        let unavailable = refusals.len() + refused.len();
        let req = FetchRequest::new_signed(&box_of, 0, 1_000, 0, vec![vec![0; SURB_LEN]; 4]);
        let served = match s.apply_or_recover(vec![fetch_op(req)], 1_000, &m).pop() {
            Some(After::Reply { fetched, .. }) => fetched,
            _ => unreachable!(),
        };
        // (By a write transaction that commits in free pages, or read-only
        // after a failed one.)
        assert_eq!(served.messages.len(), 4, "fetches are served while full");
        // Space is back: it writes again, without a restart.
        std::fs::remove_file(&filler).unwrap();
        assert!(batch(&mut s, &mut acked).is_empty());
        assert_eq!(m.storage_ok.get(), 1);
        // Everything acknowledged is there, once.
        let mut seen = std::collections::BTreeSet::new();
        let mut after = 0;
        loop {
            let req =
                FetchRequest::new_signed(&box_of, after, 1_000, 0, vec![vec![0; SURB_LEN]; 4]);
            let f = match s.apply_or_recover(vec![fetch_op(req)], 1_000, &m).pop() {
                Some(After::Reply { fetched, .. }) => fetched,
                _ => unreachable!(),
            };
            for (seq, _) in &f.messages {
                assert!(seen.insert(*seq), "seq {seq} twice");
                after = after.max(*seq);
            }
            if f.messages.is_empty() {
                break;
            }
        }
        let lost: Vec<_> = acked.difference(&seen).collect();
        eprintln!(
            "disk full: {before} stored before, {} acked in all; refused while full: 8 disk_reserve, then without the check {unavailable} unavailable after {} commit failures; fetches served; lost {}",
            acked.len(),
            m.storage_failures.get(),
            lost.len()
        );
        assert!(lost.is_empty(), "acked and lost: {lost:?}");
        assert_eq!(seen.len(), acked.len(), "nothing unacked turned up");
    }
}
