//! What one gateway's dropbox storage does per second on a real disk: the
//! storage thread's own code ([`Storage::apply`], one durable redb
//! transaction per batch, fsync on commit), driven as fast as it goes, at
//! several batch sizes. `umbra bench store` prints it.

use crate::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::storage::{After, Limits, Op, Storage, StorageError};
use protocol::dropbox::PairSecret;
use protocol::messages::{FETCH_SURBS, FetchRequest, MAX_ACKED_STORED_LEN};
use protocol::packet::SURB_LEN;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct StoreBenchOptions {
    /// Messages stored (then fetched and deleted) at each batch size.
    pub messages: usize,
    /// Dropboxes they are spread over.
    pub boxes: usize,
    /// Batch sizes to run. The storage thread takes up to 256 queued ops
    /// into one transaction: 1 is an idle gateway, 256 a saturated one.
    pub batches: Vec<usize>,
    /// Wall-clock Unix ms to run at (fetches must be fresh against it).
    pub now_ms: u64,
}

impl Default for StoreBenchOptions {
    fn default() -> Self {
        Self {
            messages: 20_000,
            boxes: 1_000,
            batches: vec![1, 16, 256],
            now_ms: 0,
        }
    }
}

/// Figures at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct StoreBatch {
    /// Ops per transaction.
    pub batch: usize,
    /// Stores committed per second (each as big as an acknowledged store
    /// may be).
    pub stores_per_s: f64,
    /// Time to commit one batch of stores, median and 99th percentile, ms:
    /// the SURB-ack of a store goes out after its batch commits, so this is
    /// what a store waits for an ack beyond the queue ahead of it.
    pub store_commit_p50_ms: f64,
    /// See `store_commit_p50_ms`.
    pub store_commit_p99_ms: f64,
    /// Fetches answered per second, each reading up to
    /// `FETCH_SURBS` messages and confirming (deleting) what the fetch
    /// before it returned.
    pub fetches_per_s: f64,
    /// Commit time of one batch of fetches, median and 99th percentile, ms.
    pub fetch_commit_p50_ms: f64,
    /// See `fetch_commit_p50_ms`.
    pub fetch_commit_p99_ms: f64,
    /// Messages left when done (all fetched and confirmed: 0).
    pub left: u64,
}

/// Runs the stores and fetches at each batch size on a fresh database in
/// `dir` (a real disk: on tmpfs the fsyncs cost nothing), with the limits
/// of `cfg`.
pub fn store_bench(
    dir: &Path,
    cfg: &GatewayConfig,
    opts: &StoreBenchOptions,
) -> Result<Vec<StoreBatch>, StorageError> {
    let boxes: Vec<_> = (0..opts.boxes.max(1))
        .map(|i| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&(i as u64).to_le_bytes());
            PairSecret::from_bytes(s).dropbox(&[1; 32], &[2; 32], 0)
        })
        .collect();
    let metrics = GatewayMetrics::new(&prometheus::Registry::new());
    let mut out = Vec::new();
    for &batch in &opts.batches {
        let batch = batch.max(1);
        let storage = Storage::open(
            &dir.join(format!("bench-{batch}.redb")),
            Limits::from_config(cfg),
        )?;
        let body = vec![0x5a; MAX_ACKED_STORED_LEN];
        let run =
            |ops: Vec<Op<()>>, commits: &mut Vec<f64>| -> Result<Vec<After<()>>, StorageError> {
                let t = Instant::now();
                let after = storage
                    .apply(ops, opts.now_ms, &metrics)
                    .map_err(|(e, _)| e)?;
                commits.push(t.elapsed().as_secs_f64() * 1000.0);
                Ok(after)
            };

        let mut store_commits = Vec::new();
        let started = Instant::now();
        let mut i = 0;
        while i < opts.messages {
            let n = batch.min(opts.messages - i);
            let ops = (i..i + n)
                .map(|k| Op::Store {
                    dropbox: boxes[k % boxes.len()].id,
                    ciphertext: body.clone(),
                    ack: None,
                })
                .collect();
            run(ops, &mut store_commits)?;
            i += n;
        }
        let store_secs = started.elapsed().as_secs_f64();

        // Each box is fetched until empty: every fetch confirms what the
        // one before it returned, as clients do.
        let mut after_seq = vec![0u64; boxes.len()];
        let mut fetch_commits = Vec::new();
        let mut fetches = 0usize;
        let started = Instant::now();
        let mut pending: Vec<usize> = (0..boxes.len()).collect();
        while !pending.is_empty() {
            let mut next = Vec::new();
            for chunk in pending.chunks(batch) {
                let ops = chunk
                    .iter()
                    .map(|&b| Op::Fetch {
                        req: FetchRequest::new_signed(
                            &boxes[b],
                            after_seq[b],
                            opts.now_ms,
                            0,
                            vec![vec![0; SURB_LEN]; FETCH_SURBS],
                        ),
                        node: (),
                    })
                    .collect();
                let after = run(ops, &mut fetch_commits)?;
                fetches += chunk.len();
                for (&b, a) in chunk.iter().zip(after) {
                    if let After::Reply { fetched, .. } = a
                        && let Some((seq, _)) = fetched.messages.last()
                    {
                        after_seq[b] = *seq;
                        next.push(b);
                    }
                }
            }
            pending = next;
        }
        let fetch_secs = started.elapsed().as_secs_f64();
        let left = boxes.iter().map(|b| storage.box_len(&b.id)).sum();
        let q = |v: &mut Vec<f64>, p: f64| {
            v.sort_by(f64::total_cmp);
            v.get(((v.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        out.push(StoreBatch {
            batch,
            stores_per_s: opts.messages as f64 / store_secs,
            store_commit_p50_ms: q(&mut store_commits, 0.5),
            store_commit_p99_ms: q(&mut store_commits, 0.99),
            fetches_per_s: fetches as f64 / fetch_secs,
            fetch_commit_p50_ms: q(&mut fetch_commits, 0.5),
            fetch_commit_p99_ms: q(&mut fetch_commits, 0.99),
            left,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_is_stored_fetched_and_deleted_at_each_batch_size() {
        let dir = tempfile::tempdir().unwrap();
        let now_ms = 1_800_000_000_000;
        let r = store_bench(
            dir.path(),
            &GatewayConfig::default(),
            &StoreBenchOptions {
                messages: 300,
                boxes: 20,
                batches: vec![1, 64],
                now_ms,
            },
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        for b in &r {
            assert_eq!(b.left, 0, "{b:?}");
            assert!(b.stores_per_s > 0.0 && b.fetches_per_s > 0.0, "{b:?}");
            assert!(b.store_commit_p99_ms >= b.store_commit_p50_ms, "{b:?}");
        }
    }
}
