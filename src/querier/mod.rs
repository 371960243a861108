//! Querier: runs LogQL over the ingester's heads and the stored segments of one tenant.
//!
//! Owns turning a selector and a time range into batches of entries the engine can read
//! ([`TenantSource`], query-lang's `LogSource`): the index names the matching streams, the
//! index's chunk refs name the blocks overlapping the range, and only those blocks' byte
//! ranges are read (through the storage's decoded-block cache). Heads are read from the
//! ingester through [`HeadReader`]. It also owns the execution envelope of a query: a
//! bounded number of queries decode at once (on the blocking pool, never on async
//! workers), a per-tenant time limit, cancellation when the caller goes away, and the
//! retention cut-off so no query returns data past `retention_period` even before the
//! compactor deletes it. It does not own LogQL (query-lang) nor HTTP (`crate::api`).
//!
//! Batches of one stream must come in time order. Blocks of one stream can overlap in
//! time (out-of-order pushes, heads not yet flushed), so overlapping pieces are grouped
//! into one *cluster* that is merged, sorted and de-duplicated (an entry flushed to a
//! segment while still visible in a head is returned once); disjoint clusters are
//! returned one by one, lazily, in the requested direction.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lode_push::{Entry, LabelSet};
use query_lang::eval::{
    self, BatchIter, Direction, EntryBatch, EvalError, LogSource, QueryParams, QueryResult,
    SelectRequest, SourceError, StreamData,
};
use query_lang::{Expr, Matcher};
use tokio::sync::Semaphore;

use crate::limits::{Limits, LimitsConfig};
use crate::storage::segment::BlockInfo;
use crate::storage::{SegmentMeta, Storage};
use crate::tenant::TenantId;

/// Unflushed entries, as the ingester holds them.
pub trait HeadReader: Send + Sync {
    /// Entries of one stream with `start_ns <= ts < end_ns`, ascending by timestamp.
    fn head_entries(
        &self,
        tenant: &TenantId,
        labels: &LabelSet,
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<Entry>;
}

impl HeadReader for crate::ingester::Ingester {
    fn head_entries(
        &self,
        tenant: &TenantId,
        labels: &LabelSet,
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<Entry> {
        crate::ingester::Ingester::head_entries(self, tenant, labels, start_ns, end_ns)
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The query or its parameters are wrong (HTTP 400).
    #[error("{0}")]
    Eval(EvalError),
    /// Reading data failed (HTTP 500).
    #[error("{0}")]
    Storage(String),
    #[error("request timed out, decrease the duration of the request or add more label matchers (query_timeout = {0:?})")]
    Timeout(Duration),
    #[error("the query was cancelled")]
    Cancelled,
}

impl Error {
    /// True when the caller's request was at fault.
    pub fn is_client_error(&self) -> bool {
        matches!(self, Error::Eval(e) if e.is_client_error())
    }
}

/// Runs queries of any tenant.
pub struct Querier {
    storage: Arc<Storage>,
    heads: Arc<dyn HeadReader>,
    limits: Arc<Limits>,
    /// Queries decoding at once; the rest wait. Decoding is CPU-bound, so more than the
    /// cores only adds memory.
    running: Arc<Semaphore>,
}

impl std::fmt::Debug for Querier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Querier").finish_non_exhaustive()
    }
}

impl Querier {
    pub fn new(storage: Arc<Storage>, heads: Arc<dyn HeadReader>, limits: Arc<Limits>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Querier {
            storage,
            heads,
            limits,
            running: Arc::new(Semaphore::new(cores)),
        }
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    pub fn limits(&self, tenant: &TenantId) -> Arc<LimitsConfig> {
        self.limits.for_tenant(tenant)
    }

    /// The oldest timestamp a tenant may still read: the later of the retention cut-off
    /// (`retention_period`, applied even before the compactor deletes anything) and
    /// `max_query_lookback`; `i64::MIN` when neither applies.
    pub fn cutoff_ns(&self, tenant: &TenantId) -> i64 {
        let now = self.storage.clock().now_ns();
        let lookback = self.limits.for_tenant(tenant).max_query_lookback;
        let lookback_cutoff = if lookback.is_zero() {
            i64::MIN
        } else {
            now.saturating_sub(lookback.as_nanos_i64())
        };
        crate::retention::cutoff_ns(&self.limits, tenant, now).max(lookback_cutoff)
    }

    /// Evaluates `expr` for `tenant`, on the blocking pool, within the tenant's
    /// `query_timeout`. Dropping the returned future cancels the evaluation.
    pub async fn query(
        &self,
        tenant: &TenantId,
        expr: Expr,
        params: QueryParams,
    ) -> Result<(QueryResult, Processed), Error> {
        let limits = self.limits.for_tenant(tenant);
        let timeout = limits.query_timeout.0;
        let cancel = Arc::new(AtomicBool::new(false));
        // Dropped with this future (client gone) or on timeout: the source stops reading.
        let _guard = CancelOnDrop(cancel.clone());
        let source = TenantSource {
            storage: self.storage.clone(),
            heads: self.heads.clone(),
            tenant: tenant.clone(),
            cutoff_ns: self.cutoff_ns(tenant),
            runtime: tokio::runtime::Handle::current(),
            cancel: cancel.clone(),
            processed: Arc::new(Counters::default()),
        };
        let counters = source.processed.clone();
        let run = async {
            let _permit = self
                .running
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Cancelled)?;
            let task = tokio::task::spawn_blocking(move || eval::eval(&expr, &params, &source));
            match task.await {
                Ok(Ok(result)) => Ok((result, counters.snapshot())),
                Ok(Err(EvalError::Source(e))) if cancel.load(Ordering::Relaxed) => {
                    let _ = e;
                    Err(Error::Cancelled)
                }
                Ok(Err(EvalError::Source(e))) => Err(Error::Storage(e.message)),
                Ok(Err(e)) => Err(Error::Eval(e)),
                Err(e) => Err(Error::Storage(format!("query task failed: {e}"))),
            }
        };
        if timeout.is_zero() {
            return run.await;
        }
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// The streams of `tenant` matching every matcher with data in `[start, end)`, past
    /// the retention cut-off.
    pub fn series(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<LabelSet> {
        let start = start_ns.max(self.cutoff_ns(tenant));
        self.storage
            .index()
            .streams(tenant, matchers, start, end_ns)
            .into_iter()
            .map(|s| s.labels)
            .collect()
    }

    /// Index statistics of the streams matching `matchers`: streams, chunks, raw bytes and
    /// entries of stored chunks overlapping the range, plus what heads hold.
    pub fn stats(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
    ) -> IndexStats {
        let start = start_ns.max(self.cutoff_ns(tenant));
        let index = self.storage.index();
        let mut stats = IndexStats::default();
        for s in index.streams(tenant, matchers, start, end_ns) {
            stats.streams += 1;
            for c in index.segment_chunks(tenant, s.id, start, end_ns) {
                if let Some(info) = c.info() {
                    stats.chunks += 1;
                    stats.bytes += info.meta.raw_bytes;
                    stats.entries += u64::from(info.meta.count);
                }
            }
            let head = self.heads.head_entries(tenant, &s.labels, start, end_ns);
            if !head.is_empty() {
                stats.chunks += 1;
                stats.entries += head.len() as u64;
                stats.bytes += head.iter().map(|e| e.line.len() as u64).sum::<u64>();
            }
        }
        stats
    }
}

impl Querier {
    /// Line bytes of each matching stream in `[start, end)`, as `(timestamp, bytes)`
    /// pieces: one per stored block (at its first entry, counted whole when it overlaps
    /// the range, as Loki's index estimates do) and one per head entry.
    pub fn volume(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<(LabelSet, Vec<(i64, u64)>)> {
        let start = start_ns.max(self.cutoff_ns(tenant));
        let index = self.storage.index();
        let mut out = Vec::new();
        for s in index.streams(tenant, matchers, start, end_ns) {
            let mut pieces = Vec::new();
            for c in index.segment_chunks(tenant, s.id, start, end_ns) {
                let Some(info) = c.info() else { continue };
                for b in info
                    .blocks
                    .iter()
                    .filter(|b| b.meta.overlaps(start, end_ns))
                {
                    pieces.push((b.meta.min_ts.max(start), b.meta.raw_bytes));
                }
            }
            for e in self.heads.head_entries(tenant, &s.labels, start, end_ns) {
                pieces.push((e.timestamp_ns, e.line.len() as u64));
            }
            if !pieces.is_empty() {
                out.push((s.labels, pieces));
            }
        }
        out
    }
}

/// `/loki/api/v1/index/stats`'s answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexStats {
    pub streams: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub entries: u64,
}

/// What a query read: entries handed to the engine and their line bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processed {
    pub lines: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    lines: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    fn add(&self, entries: &[Entry]) {
        self.lines
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let bytes: usize = entries.iter().map(|e| e.line.len()).sum();
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Processed {
        Processed {
            lines: self.lines.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One tenant's data as query-lang's source.
pub struct TenantSource {
    storage: Arc<Storage>,
    heads: Arc<dyn HeadReader>,
    tenant: TenantId,
    cutoff_ns: i64,
    runtime: tokio::runtime::Handle,
    cancel: Arc<AtomicBool>,
    processed: Arc<Counters>,
}

/// A run of one stream's entries whose time range is known before reading it.
enum Piece {
    Block(Arc<SegmentMeta>, BlockInfo),
    Head(Arc<Vec<Entry>>),
}

impl Piece {
    fn range(&self) -> (i64, i64) {
        match self {
            Piece::Block(_, b) => (b.meta.min_ts, b.meta.max_ts),
            Piece::Head(e) => (
                e.first().map_or(0, |e| e.timestamp_ns),
                e.last().map_or(0, |e| e.timestamp_ns),
            ),
        }
    }
}

impl LogSource for TenantSource {
    fn select(&self, req: &SelectRequest<'_>) -> Result<Vec<StreamData>, SourceError> {
        let start = req.start_ns.max(self.cutoff_ns);
        if start >= req.end_ns {
            return Ok(Vec::new());
        }
        let index = self.storage.index();
        let mut out = Vec::new();
        for stream in index.streams(&self.tenant, req.matchers, start, req.end_ns) {
            let mut pieces = Vec::new();
            for chunk in index.segment_chunks(&self.tenant, stream.id, start, req.end_ns) {
                let Some(info) = chunk.info() else { continue };
                for block in &info.blocks {
                    if block.meta.overlaps(start, req.end_ns) {
                        pieces.push(Piece::Block(chunk.segment.clone(), *block));
                    }
                }
            }
            let head = self
                .heads
                .head_entries(&self.tenant, &stream.labels, start, req.end_ns);
            if !head.is_empty() {
                pieces.push(Piece::Head(Arc::new(head)));
            }
            if pieces.is_empty() {
                continue;
            }
            let mut clusters = clusters(pieces);
            if req.direction == Direction::Backward {
                clusters.reverse();
            }
            let reader = ClusterReader {
                storage: self.storage.clone(),
                runtime: self.runtime.clone(),
                cancel: self.cancel.clone(),
                processed: self.processed.clone(),
                clusters: clusters.into_iter(),
            };
            out.push(StreamData {
                labels: stream.labels,
                batches: Box::new(reader) as BatchIter,
            });
        }
        Ok(out)
    }
}

/// Groups pieces whose time ranges overlap; the groups come out ascending and disjoint.
fn clusters(mut pieces: Vec<Piece>) -> Vec<Vec<Piece>> {
    pieces.sort_by_key(|p| p.range());
    let mut out: Vec<Vec<Piece>> = Vec::new();
    let mut current_max = i64::MIN;
    for p in pieces {
        let (lo, hi) = p.range();
        match out.last_mut() {
            Some(last) if lo <= current_max => {
                last.push(p);
                current_max = current_max.max(hi);
            }
            _ => {
                out.push(vec![p]);
                current_max = hi;
            }
        }
    }
    out
}

/// Reads clusters lazily: a block is fetched only when the engine asks for its batch, so a
/// log query that reaches its limit early never reads the rest.
struct ClusterReader {
    storage: Arc<Storage>,
    runtime: tokio::runtime::Handle,
    cancel: Arc<AtomicBool>,
    processed: Arc<Counters>,
    clusters: std::vec::IntoIter<Vec<Piece>>,
}

impl ClusterReader {
    fn read(&self, piece: Piece) -> Result<Arc<Vec<Entry>>, SourceError> {
        match piece {
            Piece::Head(e) => Ok(e),
            Piece::Block(seg, block) => self
                .runtime
                .block_on(self.storage.read_block(&seg, &block))
                .map_err(|e| SourceError {
                    message: e.to_string(),
                }),
        }
    }
}

impl Iterator for ClusterReader {
    type Item = Result<EntryBatch, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let cluster = self.clusters.next()?;
        if self.cancel.load(Ordering::Relaxed) {
            return Some(Err(SourceError {
                message: "the query was cancelled".to_string(),
            }));
        }
        let mut parts = Vec::with_capacity(cluster.len());
        for piece in cluster {
            match self.read(piece) {
                Ok(e) => parts.push(e),
                Err(e) => return Some(Err(e)),
            }
        }
        let entries = if parts.len() == 1 {
            parts.pop()?
        } else {
            Arc::new(merge(&parts))
        };
        self.processed.add(&entries);
        Some(Ok(EntryBatch::new(entries)))
    }
}

/// Merges sorted runs into one, ascending by timestamp (ties keep run order), dropping
/// entries equal in timestamp, line and metadata to one already taken.
fn merge(parts: &[Arc<Vec<Entry>>]) -> Vec<Entry> {
    let mut all: Vec<&Entry> = parts.iter().flat_map(|p| p.iter()).collect();
    all.sort_by_key(|e| e.timestamp_ns);
    let mut out: Vec<Entry> = Vec::with_capacity(all.len());
    let mut same_ts_from = 0;
    for e in all {
        if out
            .last()
            .is_none_or(|last| last.timestamp_ns != e.timestamp_ns)
        {
            same_ts_from = out.len();
        }
        if out.get(same_ts_from..).is_some_and(|run| run.contains(e)) {
            continue;
        }
        out.push(e.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: i64, line: &str) -> Entry {
        Entry {
            timestamp_ns: ts,
            line: line.to_string(),
            structured_metadata: Vec::new(),
        }
    }

    #[test]
    fn merge_sorts_runs_and_drops_entries_seen_in_two_runs() {
        let a = Arc::new(vec![entry(1, "a"), entry(3, "c"), entry(5, "e")]);
        let b = Arc::new(vec![entry(2, "b"), entry(3, "c"), entry(3, "c2")]);
        let merged = merge(&[a, b]);
        let lines: Vec<_> = merged.iter().map(|e| e.line.as_str()).collect();
        assert_eq!(lines, ["a", "b", "c", "c2", "e"]);
    }

    #[test]
    fn overlapping_pieces_form_one_cluster_and_disjoint_ones_stay_apart() {
        let p = |lo, hi| Piece::Head(Arc::new(vec![entry(lo, "x"), entry(hi, "y")]));
        let c = clusters(vec![p(10, 20), p(0, 5), p(15, 30), p(31, 40)]);
        let ranges: Vec<Vec<(i64, i64)>> = c
            .iter()
            .map(|c| c.iter().map(Piece::range).collect())
            .collect();
        assert_eq!(
            ranges,
            vec![vec![(0, 5)], vec![(10, 20), (15, 30)], vec![(31, 40)]]
        );
    }
}
