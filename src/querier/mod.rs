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
//! time (out-of-order pushes, heads not yet flushed), so a stream's pieces are read as a
//! lazy k-way merge that de-duplicates (an entry flushed to a segment while still visible
//! in a head is returned once). The next blocks are fetched and decoded ahead on the
//! blocking pool while the engine works, and a block whose decompressed payload lacks a
//! substring the query's leading `|=` filters require is skipped without being parsed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lode_push::{Entry, LabelSet};
use query_lang::eval::{
    self, required_substrings, BatchIter, BlockCount, BlockOrigin, Direction, EntryBatch,
    EvalError, LogSource, QueryParams, QueryResult, SampleCache, SelectRequest, SourceError,
    StreamData,
};
use query_lang::{Expr, Matcher};
use tokio::sync::Semaphore;

use crate::chunk::BlockSummary;
use crate::clock::Day;
use crate::limits::{Limits, LimitsConfig};
use crate::storage::segment::BlockInfo;
use crate::storage::{BlockFilter, SegmentMeta, Storage};
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
    /// The evaluator refused the query: HTTP 400, or 500 where Loki answers 500
    /// (`EvalError::is_client_error`).
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

    /// Index statistics of the streams matching `matchers` over `[start, end)`, as Loki
    /// 3.7 reports them (see [`IndexStats`] for the rule and why): per stream and UTC day,
    /// the stored chunks overlapping the range (whole) and the head entries inside it make
    /// one chunk of line bytes rounded to the nearest KiB, and every chunk is counted twice.
    pub fn stats(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
    ) -> IndexStats {
        use std::collections::BTreeMap;

        let start = start_ns.max(self.cutoff_ns(tenant));
        let index = self.storage.index();
        let mut stats = IndexStats::default();
        for s in index.streams(tenant, matchers, start, end_ns) {
            // (entries, line bytes) of each UTC day of the stream.
            let mut days: BTreeMap<Day, (u64, u64)> = BTreeMap::new();
            for c in index.segment_chunks(tenant, s.id, start, end_ns) {
                if let Some(info) = c.info() {
                    let day = days.entry(Day::of_ns(info.meta.min_ts)).or_default();
                    day.0 += u64::from(info.meta.count);
                    day.1 += info.meta.raw_bytes;
                }
            }
            for e in self.heads.head_entries(tenant, &s.labels, start, end_ns) {
                let day = days.entry(Day::of_ns(e.timestamp_ns)).or_default();
                day.0 += 1;
                day.1 += e.line.len() as u64;
            }
            if days.is_empty() {
                continue;
            }
            stats.streams += 1;
            for (entries, bytes) in days.into_values() {
                stats.add_chunk(entries, bytes);
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

/// `/loki/api/v1/index/stats`'s answer, computed by Loki 3.7's rule so Grafana shows the
/// same query-size estimate for the same data.
///
/// Loki answers from its index's chunk metadata: each chunk's uncompressed size is kept
/// as whole KiB, rounded to the nearest (`math.Round(size / 1024)` when the chunk is
/// indexed), and the single binary merges the ingester's answer, which itself asks the
/// store index, with the store index's own answer, so every flushed chunk is counted
/// twice (chunks, entries and bytes; streams once; grafana/loki PR #23796). Lode's
/// counterpart of a Loki chunk is a stream's data of one UTC day (Lode's index unit;
/// Loki cuts one chunk per stream until it is full or two hours old), whether it sits in
/// heads, in segments or both, so the answer does not depend on when Lode flushed.
///
/// Doubt, kept for compatibility: the double count is a Loki bug (its unflushed chunks
/// count once, with exact bytes), and a stream-day above Loki's chunk size would be
/// several chunks in Loki: the chunk count is then lower than Loki's, and the bytes differ
/// by at most half a KiB per extra chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexStats {
    pub streams: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub entries: u64,
}

impl IndexStats {
    /// How many times Loki 3.7 counts each chunk (ingester's answer plus the store's).
    pub const LOKI_CHUNK_COUNT: u64 = 2;

    /// Adds one chunk of `entries` lines and `line_bytes` bytes: its size in whole KiB,
    /// rounded to the nearest (halves up), counted [`Self::LOKI_CHUNK_COUNT`] times.
    pub fn add_chunk(&mut self, entries: u64, line_bytes: u64) {
        let kib = line_bytes.saturating_add(512) >> 10;
        let n = Self::LOKI_CHUNK_COUNT;
        self.chunks += n;
        self.entries += n * entries;
        self.bytes += n * (kib << 10);
    }
}

/// What a query read: lines of the blocks it decompressed or counted and of the head
/// entries it took, and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processed {
    pub lines: u64,
    pub bytes: u64,
    /// Metadata-set groups of blocks answered from their summaries, unread.
    pub counted_groups: u64,
}

#[derive(Debug, Default)]
struct Counters {
    lines: AtomicU64,
    bytes: AtomicU64,
    counted_groups: AtomicU64,
}

impl Counters {
    fn add(&self, entries: &[Entry]) {
        let bytes: usize = entries.iter().map(|e| e.line.len()).sum();
        self.add_read(entries.len() as u64, bytes as u64);
    }

    /// Lines of a block read (decompressed, whether or not any passed its filter).
    fn add_read(&self, lines: u64, bytes: u64) {
        self.lines.fetch_add(lines, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Lines of blocks counted from their summaries, without reading them.
    fn add_counted(&self, lines: u64, bytes: u64) {
        self.lines.fetch_add(lines, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.counted_groups.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Processed {
        Processed {
            lines: self.lines.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            counted_groups: self.counted_groups.load(Ordering::Relaxed),
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
    /// A stored block, with its line totals per metadata set when its footer has them.
    Block(Arc<SegmentMeta>, BlockInfo, Option<Arc<BlockSummary>>),
    Head(Arc<Vec<Entry>>),
}

impl Piece {
    fn range(&self) -> (i64, i64) {
        match self {
            Piece::Block(_, b, _) => (b.meta.min_ts, b.meta.max_ts),
            Piece::Head(e) => (
                e.first().map_or(0, |e| e.timestamp_ns),
                e.last().map_or(0, |e| e.timestamp_ns),
            ),
        }
    }

    /// A stored block sharing no time with the stream's head (`head`: its time range):
    /// it holds no entry another piece holds (see [`take_countable`]).
    fn apart_from(&self, head: Option<(i64, i64)>) -> bool {
        let Piece::Block(_, b, _) = self else {
            return false;
        };
        !head.is_some_and(|(lo, hi)| hi >= b.meta.min_ts && lo <= b.meta.max_ts)
    }
}

impl LogSource for TenantSource {
    fn select(&self, req: &SelectRequest<'_>) -> Result<Vec<StreamData>, SourceError> {
        let start = req.start_ns.max(self.cutoff_ns);
        if start >= req.end_ns {
            return Ok(Vec::new());
        }
        let index = self.storage.index();
        let filter = BlockFilter::new(required_substrings(req.line_filters));
        // Entries before `start` (retention) must count nowhere: the first span starts
        // there instead (a part of a span holds entries of the same windows).
        let edges: Option<Arc<[i64]>> = req.count_edges.filter(|e| e.len() >= 2).map(|e| {
            std::iter::once(start - 1)
                .chain(e.iter().copied().filter(|&x| x > start - 1))
                .collect()
        });
        // Every stream's pieces first, so that the blocks of all streams to count from
        // their columns are read at once, on every core.
        let mut found: Vec<Found> = Vec::new();
        let mut from_columns: Vec<(usize, Arc<SegmentMeta>, BlockInfo)> = Vec::new();
        for stream in index.streams(&self.tenant, req.matchers, start, req.end_ns) {
            // Heads before segments: a flush finishing in between then shows its entries
            // twice (the merge drops the copy; counts leave blocks overlapping the head
            // to the merge) instead of in neither place.
            let head = self
                .heads
                .head_entries(&self.tenant, &stream.labels, start, req.end_ns);
            let head = (!head.is_empty()).then(|| Piece::Head(Arc::new(head)));
            let mut pieces = Vec::new();
            for chunk in index.segment_chunks(&self.tenant, stream.id, start, req.end_ns) {
                let Some(info) = chunk.info() else { continue };
                for (i, block) in info.blocks.iter().enumerate() {
                    if block.meta.overlaps(start, req.end_ns) {
                        let summary = info.summaries.get(i).cloned().flatten();
                        pieces.push(Piece::Block(chunk.segment.clone(), *block, summary));
                    }
                }
            }
            let mut counts = Vec::new();
            if let Some(edges) = &edges {
                let countable = take_countable(&mut pieces, head.as_ref().map(Piece::range), edges);
                counts = countable.counts;
                let at = found.len();
                from_columns.extend(countable.from_columns.into_iter().map(|(s, b)| (at, s, b)));
            }
            // Stored blocks sharing no time with the head hold no entry another piece
            // holds (see `take_countable`): when order does not matter they go out
            // whole, each a batch the engine may cache, instead of merged.
            let mut whole: Vec<Piece> = if req.any_order {
                let head_range = head.as_ref().map(Piece::range);
                let (whole, rest) = pieces.into_iter().partition(|p| p.apart_from(head_range));
                pieces = rest;
                whole
            } else {
                Vec::new()
            };
            // Whole blocks whose samples the query's extraction has cached are handed as
            // those samples, unread (a block straddling the retention cut-off is not
            // whole once opened, so it is read).
            let mut cached = Vec::new();
            if let Some(key) = req.samples {
                let samples = self.storage.sample_cache();
                whole.retain(|p| {
                    let Piece::Block(seg, block, _) = p else {
                        return true;
                    };
                    if block.meta.min_ts < self.cutoff_ns {
                        return true;
                    }
                    let origin = block_origin(seg, block);
                    match samples.lookup(origin, key) {
                        Some(hit) => {
                            self.processed
                                .add_read(u64::from(block.meta.count), block.meta.raw_bytes);
                            cached.push(EntryBatch::from_samples(origin, hit));
                            false
                        }
                        None => true,
                    }
                });
            }
            pieces.extend(head);
            found.push(Found {
                labels: stream.labels,
                pieces,
                whole,
                cached,
                counts,
            });
        }
        if let Some(edges) = &edges {
            for (at, counted) in self.count_columns(from_columns, edges)? {
                if let Some(f) = found.get_mut(at) {
                    f.counts.extend(counted);
                }
            }
        }
        let mut out = Vec::new();
        for Found {
            labels,
            pieces,
            whole,
            cached,
            counts,
        } in found
        {
            for c in &counts {
                self.processed.add_counted(c.lines, c.bytes);
            }
            if pieces.is_empty() && whole.is_empty() && cached.is_empty() && counts.is_empty() {
                continue;
            }
            let reader = |pieces, merge| {
                MergeReader::new(
                    pieces,
                    req.direction == Direction::Forward,
                    filter.clone(),
                    self.storage.clone(),
                    self.runtime.clone(),
                    self.cancel.clone(),
                    self.processed.clone(),
                )
                .merging(merge)
                .dropping_before(self.cutoff_ns)
            };
            // Whole blocks read for a query that caches their samples are not kept in
            // the decoded-block cache: the samples are what a later run reuses. Under a
            // substring filter most blocks are skipped, leaving no samples to reuse; they
            // are read ahead on the decode pool as before, which a rerun needs (reading
            // them here, one by one, made a rerun of `rate(... |= "error")` 4x slower).
            let keep_whole = req.samples.is_none() || !filter.is_empty();
            let batches: BatchIter = if whole.is_empty() && cached.is_empty() {
                Box::new(reader(pieces, true))
            } else {
                Box::new(
                    cached
                        .into_iter()
                        .map(Ok)
                        .chain(reader(whole, false).keeping_blocks(keep_whole))
                        .chain(reader(pieces, true)),
                )
            };
            out.push(StreamData {
                labels,
                batches,
                counts,
            });
        }
        Ok(out)
    }

    fn sample_cache(&self) -> Option<&SampleCache> {
        Some(self.storage.sample_cache())
    }
}

/// A stored block's identity in the sample cache and in the batches handed to the engine.
fn block_origin(seg: &SegmentMeta, block: &BlockInfo) -> BlockOrigin {
    BlockOrigin {
        object: seg.id.0,
        offset: block.offset,
    }
}

/// One selected stream before its reader is built.
struct Found {
    labels: LabelSet,
    /// Pieces read through the merge.
    pieces: Vec<Piece>,
    /// Stored blocks handed out whole, unmerged (`SelectRequest::any_order`).
    whole: Vec<Piece>,
    /// Whole stored blocks answered from the sample cache, unread.
    cached: Vec<EntryBatch>,
    counts: Vec<BlockCount>,
}

/// Stored blocks counted at once from their footer summaries, and those to count from
/// their columns (see [`TenantSource::count_columns`]).
#[derive(Default)]
struct Countable {
    counts: Vec<BlockCount>,
    from_columns: Vec<(Arc<SegmentMeta>, BlockInfo)>,
}

/// Removes from `pieces` the stored blocks that can be counted unread: those sharing no
/// time with the stream's head (`head`: its time range). An entry can be in a head and a
/// segment at once (flushed, head not yet cleared) and only reading de-duplicates it;
/// stored blocks do not repeat each other's entries (the ingester drops duplicates of
/// unflushed entries and WAL replay skips flushed ones), so blocks overlapping each other
/// are still counted. An entry pushed again after its first copy was flushed is stored
/// twice and counted twice here, as index/stats counts it. A block lying wholly inside
/// one span between `edges` is counted from its summary; the others from their columns.
fn take_countable(pieces: &mut Vec<Piece>, head: Option<(i64, i64)>, edges: &[i64]) -> Countable {
    let mut out = Countable::default();
    // The span (edges[i-1], edges[i]] holding ts, as i; 0 or len past either end.
    let span_of = |ts: i64| edges.partition_point(|&e| e < ts);
    pieces.retain(|piece| {
        if !piece.apart_from(head) {
            return true;
        }
        let Piece::Block(seg, block, summary) = piece else {
            return true;
        };
        let (min, max) = (block.meta.min_ts, block.meta.max_ts);
        let span = span_of(min);
        match summary {
            Some(summary) if span > 0 && span < edges.len() && span_of(max) == span => {
                out.counts.extend(summary.groups.iter().map(|g| BlockCount {
                    timestamp_ns: max,
                    metadata: g.metadata.clone(),
                    lines: u64::from(g.count),
                    bytes: g.bytes,
                }));
            }
            _ => out.from_columns.push((seg.clone(), *block)),
        }
        false
    });
    out
}

/// Column reads of blocks to count run this many at a time (on the storage's decode
/// pool, one thread per core).
const COUNT_READS_IN_FLIGHT: usize = 4;

impl TenantSource {
    /// Counts blocks from their columns (see [`take_countable`]): `blocks` are
    /// `(stream, segment, block)`, the answer each stream's counts, in no set order.
    fn count_columns(
        &self,
        blocks: Vec<(usize, Arc<SegmentMeta>, BlockInfo)>,
        edges: &Arc<[i64]>,
    ) -> Result<Vec<(usize, Vec<BlockCount>)>, SourceError> {
        use futures::StreamExt;
        let reads = blocks.into_iter().map(|(at, seg, block)| {
            let (storage, edges) = (self.storage.clone(), edges.clone());
            let cancel = self.cancel.clone();
            async move {
                // A cancelled query stops reading; its answer is dropped below.
                if cancel.load(Ordering::Relaxed) {
                    return (at, Ok(Vec::new()));
                }
                (at, storage.count_block(&seg, &block, edges).await)
            }
        });
        let done: Vec<_> = self.runtime.block_on(
            futures::stream::iter(reads)
                .buffer_unordered(COUNT_READS_IN_FLIGHT)
                .collect(),
        );
        if self.cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        done.into_iter()
            .map(|(at, counted)| {
                counted.map(|c| (at, c)).map_err(|e| SourceError {
                    message: e.to_string(),
                })
            })
            .collect()
    }
}

/// What a source read answers once the query's cancel flag is up.
fn cancelled() -> SourceError {
    SourceError {
        message: "the query was cancelled".to_string(),
    }
}

/// The remaining entries `[lo, hi)` of one opened piece.
struct Cursor {
    entries: Arc<Vec<Entry>>,
    lo: usize,
    hi: usize,
    /// The stored block the entries are (all of it, or all that can pass the filter);
    /// `None` for a head.
    origin: Option<BlockOrigin>,
}

impl Cursor {
    /// The timestamp of the entry the merge takes next from this piece.
    fn next_ts(&self, forward: bool) -> Option<i64> {
        let i = if forward {
            self.lo
        } else {
            self.hi.checked_sub(1)?
        };
        (self.lo < self.hi).then(|| self.entries.get(i).map(|e| e.timestamp_ns))?
    }

    fn next_entry(&self, forward: bool) -> Option<&Entry> {
        let i = if forward {
            self.lo
        } else {
            self.hi.checked_sub(1)?
        };
        (self.lo < self.hi).then(|| self.entries.get(i))?
    }

    fn advance(&mut self, forward: bool) {
        if forward {
            self.lo += 1;
        } else {
            self.hi -= 1;
        }
    }
}

/// Reads one stream's pieces (blocks and heads) in time order, as a lazy k-way merge.
///
/// A piece is fetched and decoded only when the merge reaches its time range, so a log
/// query that stops at `limit` reads only the newest (or oldest) blocks, and pieces that
/// merely touch at their edges are not read together. Runs of one piece that no other
/// piece interleaves are handed out as slices of the shared decoded block (no copy); an
/// entry found in two pieces (flushed to a segment while still in a head) comes out once.
struct MergeReader {
    forward: bool,
    /// False: pieces are handed out one whole piece per batch, in the order they are
    /// opened, without merging (for pieces known to share no entry, under
    /// `SelectRequest::any_order`).
    merge: bool,
    /// Entries before it are dropped as pieces are opened
    /// (see [`MergeReader::dropping_before`]).
    floor: i64,
    /// Blocks (not heads: they are already in memory) holding none of a required
    /// substring are skipped unparsed.
    filter: BlockFilter,
    /// Whether blocks read are kept in the storage's decoded-block cache.
    keep_blocks: bool,
    /// Unopened pieces in merge order: by first entry (forward) or last entry (backward).
    pending: std::collections::VecDeque<Piece>,
    /// Reads of the next pending blocks, started early so that fetching and decoding
    /// run on the blocking pool while the engine works on the current ones; as long as
    /// `pending`'s front.
    prefetched: std::collections::VecDeque<Prefetch>,
    active: Vec<Cursor>,
    storage: Arc<Storage>,
    runtime: tokio::runtime::Handle,
    cancel: Arc<AtomicBool>,
    processed: Arc<Counters>,
}

/// A started read of a pending block (its result is `None` when the filter skipped the
/// block), or nothing to do for a head, whose entries are already in memory.
enum Prefetch {
    Block(tokio::task::JoinHandle<Result<Option<Arc<Vec<Entry>>>, crate::storage::Error>>),
    Head,
}

/// Pending blocks read ahead of the merge: enough to keep the second core decoding while
/// the engine works, few enough to bound the memory held per stream.
const PREFETCH_BLOCKS: usize = 2;

/// Read-ahead under a substring filter: reads then mostly skip blocks or keep few of
/// their lines, so more of them in flight keep every core decompressing for little
/// memory.
const FILTERED_PREFETCH_BLOCKS: usize = 8;

impl MergeReader {
    fn new(
        mut pieces: Vec<Piece>,
        forward: bool,
        filter: BlockFilter,
        storage: Arc<Storage>,
        runtime: tokio::runtime::Handle,
        cancel: Arc<AtomicBool>,
        processed: Arc<Counters>,
    ) -> Self {
        if forward {
            pieces.sort_by_key(|p| p.range().0);
        } else {
            pieces.sort_by_key(|p| std::cmp::Reverse(p.range().1));
        }
        MergeReader {
            forward,
            merge: true,
            floor: i64::MIN,
            filter,
            keep_blocks: true,
            pending: pieces.into(),
            prefetched: std::collections::VecDeque::new(),
            active: Vec::new(),
            storage,
            runtime,
            cancel,
            processed,
        }
    }

    /// Entries older than `floor` (the retention cut-off) are never handed out, even
    /// from a block that also holds newer ones.
    fn dropping_before(mut self, floor: i64) -> Self {
        self.floor = floor;
        self
    }

    /// Whether blocks read are kept in the decoded-block cache (the default) or only
    /// read through it ([`Storage::read_block_through`]).
    fn keeping_blocks(mut self, keep: bool) -> Self {
        self.keep_blocks = keep;
        self
    }

    /// Whether pieces are merged (the default) or handed out whole one after another.
    fn merging(mut self, merge: bool) -> Self {
        self.merge = merge;
        self
    }

    /// Starts reads of the next pending pieces not yet started, up to the read-ahead.
    fn prefetch(&mut self) {
        let ahead = if !self.keep_blocks && self.storage.is_local() {
            // Read on this thread as they are opened (see `Storage::read_block_here`).
            0
        } else if self.filter.is_empty() {
            PREFETCH_BLOCKS
        } else {
            FILTERED_PREFETCH_BLOCKS
        };
        while self.prefetched.len() < self.pending.len().min(ahead) {
            let handle = match self.pending.get(self.prefetched.len()) {
                Some(Piece::Block(seg, block, _)) => {
                    let (storage, seg, block) = (self.storage.clone(), seg.clone(), *block);
                    let filter = self.filter.clone();
                    let keep = self.keep_blocks;
                    Prefetch::Block(self.runtime.spawn(async move {
                        storage.read_block_with(&seg, &block, &filter, keep).await
                    }))
                }
                Some(Piece::Head(_)) => Prefetch::Head,
                None => break,
            };
            self.prefetched.push_back(handle);
        }
    }

    /// Opens the front pending piece (its read may already be under way).
    fn open_next(&mut self) -> Result<(), SourceError> {
        let Some(piece) = self.pending.pop_front() else {
            return Ok(());
        };
        let started = self.prefetched.pop_front();
        self.prefetch();
        let err = |message: String| SourceError { message };
        let mut origin = None;
        if let Piece::Block(seg, block, _) = &piece {
            self.processed
                .add_read(u64::from(block.meta.count), block.meta.raw_bytes);
            origin = Some(block_origin(seg, block));
        }
        let entries = match (piece, started) {
            (Piece::Head(e), _) => {
                self.processed.add(&e);
                Some(e)
            }
            (Piece::Block(..), Some(Prefetch::Block(handle))) => self
                .runtime
                .block_on(handle)
                .map_err(|e| err(format!("block read failed: {e}")))?
                .map_err(|e| err(e.to_string()))?,
            (Piece::Block(seg, block, _), _) => {
                let here = (!self.keep_blocks)
                    .then(|| self.storage.read_block_here(&seg, &block, &self.filter))
                    .flatten();
                let read = match here {
                    Some(read) => read,
                    None => self.runtime.block_on(self.storage.read_block_with(
                        &seg,
                        &block,
                        &self.filter,
                        self.keep_blocks,
                    )),
                };
                read.map_err(|e| err(e.to_string()))?
            }
        };
        // A skipped block holds no line that can pass the query's filters.
        if let Some(entries) = entries {
            let hi = entries.len();
            let lo = entries.partition_point(|e| e.timestamp_ns < self.floor);
            if lo < hi {
                self.active.push(Cursor {
                    entries,
                    lo,
                    hi,
                    // Part of a block is not the block.
                    origin: origin.filter(|_| lo == 0),
                });
            }
        }
        Ok(())
    }

    /// True when `a` comes before `b` in merge order.
    fn before(&self, a: i64, b: i64) -> bool {
        if self.forward {
            a < b
        } else {
            a > b
        }
    }

    fn next_batch(&mut self) -> Result<Option<EntryBatch>, SourceError> {
        if !self.merge {
            return self.next_whole();
        }
        let forward = self.forward;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            self.active.retain(|c| c.lo < c.hi);
            // The cursor whose next entry comes first.
            let best = self
                .active
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.next_ts(forward).map(|t| (i, t)))
                .reduce(|a, b| if self.before(b.1, a.1) { b } else { a });
            let Some((bi, bts)) = best else {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                self.open_next()?;
                continue;
            };
            // A piece that may hold entries at or before the best one must be opened first.
            if let Some(p) = self.pending.front() {
                let edge = if forward { p.range().0 } else { p.range().1 };
                if !self.before(bts, edge) {
                    self.open_next()?;
                    continue;
                }
            }
            // Entries of the best cursor strictly before every other piece's next entry
            // (and before any unopened piece) go out as one slice.
            let bound = self
                .active
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != bi)
                .filter_map(|(_, c)| c.next_ts(forward))
                .chain(
                    self.pending
                        .front()
                        .map(|p| if forward { p.range().0 } else { p.range().1 }),
                )
                .reduce(|a, b| if self.before(b, a) { b } else { a });
            let Some(cursor) = self.active.get(bi) else {
                continue;
            };
            let (lo, hi) = (cursor.lo, cursor.hi);
            let whole_block = cursor
                .origin
                .filter(|_| lo == 0 && hi == cursor.entries.len());
            let run = cursor.entries.get(lo..hi).unwrap_or_default();
            let (start, end) = match bound {
                None => (lo, hi),
                Some(b) if forward => (lo, lo + run.partition_point(|e| e.timestamp_ns < b)),
                Some(b) => (lo + run.partition_point(|e| e.timestamp_ns <= b), hi),
            };
            let (start, end) = if start < end {
                (start, end)
            } else if forward {
                // A tie with another piece: one entry at a time.
                (lo, lo + 1)
            } else {
                (hi - 1, hi)
            };
            let entries = cursor.entries.clone();
            if let Some(c) = self.active.get_mut(bi) {
                if forward {
                    c.lo = end;
                } else {
                    c.hi = start;
                }
            }
            if end - start == 1 {
                // The same entry in another piece (a head not yet cleared after its flush)
                // is skipped there.
                if let Some(e) = entries.get(start) {
                    for c in &mut self.active {
                        while c.next_entry(forward) == Some(e) {
                            c.advance(forward);
                        }
                    }
                }
            }
            // A batch that is a whole block says so: the engine may keep what it made of it.
            let origin = whole_block.filter(|_| (start, end) == (lo, hi));
            let batch = EntryBatch {
                entries,
                start,
                end,
                origin,
                cached: None,
            };
            return Ok(Some(batch));
        }
    }
}

impl MergeReader {
    /// The next opened piece, whole (blocks the filter skipped yield nothing).
    fn next_whole(&mut self) -> Result<Option<EntryBatch>, SourceError> {
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            if let Some(c) = self.active.pop() {
                return Ok(Some(EntryBatch {
                    entries: c.entries,
                    start: c.lo,
                    end: c.hi,
                    origin: c.origin,
                    cached: None,
                }));
            }
            if self.pending.is_empty() {
                return Ok(None);
            }
            self.open_next()?;
        }
    }
}

impl Iterator for MergeReader {
    type Item = Result<EntryBatch, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: i64, line: &str) -> Entry {
        Entry {
            timestamp_ns: ts,
            line: line.to_string(),
            structured_metadata: Default::default(),
        }
    }

    #[test]
    fn index_stats_count_each_chunk_twice_in_whole_kib_rounded_to_nearest() {
        let mut stats = IndexStats::default();
        // 76.33 KiB rounds down, 69.09 down, 53.99 up, 47.55 up, 10.78 up: Loki's numbers
        // for the conformance set's five prod streams (528384 bytes = 2 × 258 KiB).
        for (entries, bytes) in [
            (378, 78159),
            (345, 70746),
            (457, 55289),
            (404, 48692),
            (200, 11037),
        ] {
            stats.add_chunk(entries, bytes);
        }
        assert_eq!(
            stats,
            IndexStats {
                streams: 0,
                chunks: 10,
                bytes: 528_384,
                entries: 3568
            }
        );
        let mut half = IndexStats::default();
        half.add_chunk(1, 512);
        half.add_chunk(1, 511);
        assert_eq!(
            half.bytes,
            2 * 1024,
            "512 bytes round up to 1 KiB, 511 down to 0"
        );
    }

    fn read_all(pieces: Vec<Vec<Entry>>, forward: bool) -> Vec<(i64, String)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let storage = rt
            .block_on(Storage::with_object_store(
                Arc::new(object_store::memory::InMemory::new()),
                1 << 20,
                Arc::new(crate::clock::SystemClock),
            ))
            .unwrap();
        let pieces = pieces
            .into_iter()
            .map(|p| Piece::Head(Arc::new(p)))
            .collect();
        let reader = MergeReader::new(
            pieces,
            forward,
            BlockFilter::default(),
            storage,
            rt.handle().clone(),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Counters::default()),
        );
        let mut out = Vec::new();
        let mut last: Option<i64> = None;
        for batch in reader {
            let batch = batch.unwrap();
            let slice = batch.as_slice();
            assert!(slice
                .windows(2)
                .all(|w| w[0].timestamp_ns <= w[1].timestamp_ns));
            let (first, end) = (slice[0].timestamp_ns, slice[slice.len() - 1].timestamp_ns);
            if let Some(l) = last {
                if forward {
                    assert!(first >= l, "batches come in order");
                } else {
                    assert!(end <= l, "batches come in order");
                }
            }
            last = Some(if forward { end } else { first });
            let mut lines: Vec<_> = slice
                .iter()
                .map(|e| (e.timestamp_ns, e.line.clone()))
                .collect();
            if !forward {
                lines.reverse();
            }
            out.extend(lines);
        }
        out
    }

    #[test]
    fn overlapping_pieces_merge_in_time_order_and_shared_entries_come_once() {
        let a = vec![entry(1, "a"), entry(3, "c"), entry(5, "e"), entry(9, "i")];
        let b = vec![entry(2, "b"), entry(3, "c"), entry(4, "d")];
        let c = vec![entry(20, "t"), entry(21, "u")];
        let want = |rev: bool| {
            let mut v: Vec<(i64, String)> = [
                (1, "a"),
                (2, "b"),
                (3, "c"),
                (4, "d"),
                (5, "e"),
                (9, "i"),
                (20, "t"),
                (21, "u"),
            ]
            .iter()
            .map(|(t, l)| (*t, l.to_string()))
            .collect();
            if rev {
                v.reverse();
            }
            v
        };
        assert_eq!(
            read_all(vec![a.clone(), b.clone(), c.clone()], true),
            want(false)
        );
        assert_eq!(read_all(vec![c, b, a], false), want(true));
    }

    #[test]
    fn same_timestamp_different_lines_are_all_kept() {
        let a = vec![entry(1, "x"), entry(1, "y")];
        let b = vec![entry(1, "z")];
        let got = read_all(vec![a, b], true);
        assert_eq!(got.len(), 3, "{got:?}");
    }
}

#[cfg(test)]
mod flush_race_tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::ingester::Ingester;
    use crate::testutil::{open_store, store_config};
    use query_lang::eval::{QueryParams, QueryResult};

    /// Heads whose every read is preceded by a finished flush: what a query sees when a
    /// flush completes while it is between reading heads and listing segments.
    struct FlushingHeads {
        ingester: Arc<Ingester>,
        runtime: tokio::runtime::Handle,
    }

    impl HeadReader for FlushingHeads {
        fn head_entries(
            &self,
            tenant: &TenantId,
            labels: &LabelSet,
            start_ns: i64,
            end_ns: i64,
        ) -> Vec<Entry> {
            let _ = self.runtime.block_on(self.ingester.flush_all());
            self.ingester.head_entries(tenant, labels, start_ns, end_ns)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_during_a_query_hides_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, ingester) = open_store(dir.path(), Arc::new(SystemClock)).await;
        let tenant = TenantId::new("fake").unwrap();
        let labels = LabelSet::parse(r#"{app="a"}"#).unwrap();
        let now = SystemClock.now_ns();
        let entries = (0..3)
            .map(|i| Entry {
                timestamp_ns: now - 3_000_000_000 + i,
                line: format!("line {i}"),
                structured_metadata: Default::default(),
            })
            .collect();
        ingester
            .push(&tenant, vec![(labels, entries)])
            .await
            .unwrap();
        let heads = Arc::new(FlushingHeads {
            ingester: ingester.clone(),
            runtime: tokio::runtime::Handle::current(),
        });
        let limits = Arc::new(Limits::new(LimitsConfig::default()));
        let querier = Querier::new(storage.clone(), heads, limits);
        let expr = query_lang::parse_expr(r#"count_over_time({app="a"}[1h])"#).unwrap();
        let (result, _) = querier
            .query(&tenant, expr, QueryParams::instant(now))
            .await
            .unwrap();
        let QueryResult::Vector(v) = result else {
            panic!("not a vector: {result:?}");
        };
        assert_eq!(v.iter().map(|s| s.value).collect::<Vec<_>>(), [3.0]);
        assert_eq!(storage.segments(&tenant).len(), 1, "the flush did happen");
    }

    /// Metric queries over segments and heads answer the same with the sample cache as
    /// without, run after run, including for a block a head's entries interleave (its
    /// batches are pieces of it, which must not be cached as the block).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_samples_answer_as_reading_the_lines_does() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, ingester) = open_store(dir.path(), Arc::new(SystemClock)).await;
        let tenant = TenantId::new("fake").unwrap();
        let now = SystemClock.now_ns();
        let t0 = now - 600_000_000_000;
        let lines = |app: &str, from: i64, step: i64| {
            let labels = LabelSet::parse(&format!(r#"{{app="{app}"}}"#)).unwrap();
            let entries = (0..200)
                .map(|i| Entry {
                    timestamp_ns: from + i * step,
                    line: format!("level={} took={}ms", ["info", "error"][i as usize % 2], i),
                    structured_metadata: Default::default(),
                })
                .collect();
            (labels, entries)
        };
        ingester
            .push(
                &tenant,
                vec![lines("a", t0, 1_000_000_000), lines("b", t0, 1_000_000_000)],
            )
            .await
            .unwrap();
        ingester.flush_all().await.unwrap();
        // Stream b's head now interleaves its stored block.
        ingester
            .push(&tenant, vec![lines("b", t0 + 500_000_000, 1_000_000_000)])
            .await
            .unwrap();
        let limits = Arc::new(Limits::new(LimitsConfig::default()));
        let cached = Querier::new(storage.clone(), ingester.clone(), limits.clone());
        let plain_storage = Storage::open(&store_config(dir.path(), 0), Arc::new(SystemClock))
            .await
            .unwrap();
        let plain = Querier::new(plain_storage, ingester.clone(), limits);
        let queries = [
            r#"sum by (app, level) (count_over_time({app=~"a|b"} | logfmt [1m]))"#,
            r#"sum by (app) (sum_over_time({app=~"a|b"} | logfmt | unwrap duration(took) [5m]))"#,
        ];
        let ranges = [
            QueryParams::range(t0 - 60_000_000_000, now, 60_000_000_000),
            QueryParams::range(t0 + 30_000_000_000, t0 + 150_000_000_000, 10_000_000_000),
        ];
        for _ in 0..2 {
            for q in queries {
                for params in &ranges {
                    let expr = query_lang::parse_expr(q).unwrap();
                    let (want, _) = plain
                        .query(&tenant, expr.clone(), params.clone())
                        .await
                        .unwrap();
                    let (got, _) = cached.query(&tenant, expr, params.clone()).await.unwrap();
                    assert_eq!(
                        serde_json::to_string(&got).unwrap(),
                        serde_json::to_string(&want).unwrap(),
                        "{q}"
                    );
                }
            }
        }
        // Stream a's block, once per query; stream b's block is never whole.
        assert_eq!(storage.sample_cache().len(), queries.len());
    }

    /// A store holding one flushed stream `{app="a"}` of 300 logfmt lines over the last
    /// ten minutes, a querier over it, and a range covering them at 1m steps.
    struct Flushed {
        storage: Arc<Storage>,
        querier: Querier,
        tenant: TenantId,
        params: QueryParams,
    }

    async fn flushed_logfmt_stream(dir: &std::path::Path) -> Flushed {
        let (storage, ingester) = open_store(dir, Arc::new(SystemClock)).await;
        let tenant = TenantId::new("fake").unwrap();
        let now = SystemClock.now_ns();
        let t0 = now - 600_000_000_000;
        let labels = LabelSet::parse(r#"{app="a"}"#).unwrap();
        let entries = (0..300)
            .map(|i| Entry {
                timestamp_ns: t0 + i * 1_000_000_000,
                line: format!("level={} took={}ms", ["info", "error"][i as usize % 2], i),
                structured_metadata: Default::default(),
            })
            .collect();
        ingester
            .push(&tenant, vec![(labels, entries)])
            .await
            .unwrap();
        ingester.flush_all().await.unwrap();
        let limits = Arc::new(Limits::new(LimitsConfig::default()));
        Flushed {
            querier: Querier::new(storage.clone(), ingester, limits),
            storage,
            tenant,
            params: QueryParams::range(t0 - 60_000_000_000, now, 60_000_000_000),
        }
    }

    /// Segment files under `dir`, for tests that damage them.
    fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else if p.extension().is_some_and(|x| x == "seg") {
                    out.push(p);
                }
            }
        }
        out
    }

    /// A metric query keeps the samples it made of whole stored blocks, not their decoded
    /// entries, and runs again without reading those blocks: after the segment's bytes
    /// are wiped, it still answers as before, while a log query, which must read them,
    /// fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repeated_metric_query_reads_no_block_whose_samples_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let Flushed {
            storage,
            querier,
            tenant,
            params,
        } = flushed_logfmt_stream(dir.path()).await;
        let metric = query_lang::parse_expr(
            r#"sum by (level) (count_over_time({app="a"} | logfmt | took > 10ms [1m]))"#,
        )
        .unwrap();
        let (first, _) = querier
            .query(&tenant, metric.clone(), params.clone())
            .await
            .unwrap();
        assert_eq!(storage.cached_bytes(), 0, "decoded entries were cached");
        assert!(!storage.sample_cache().is_empty(), "no samples were cached");
        let files = segment_files(dir.path());
        assert!(!files.is_empty());
        for f in files {
            let len = std::fs::metadata(&f).unwrap().len() as usize;
            std::fs::write(&f, vec![0u8; len]).unwrap();
        }
        let (again, _) = querier
            .query(&tenant, metric, params.clone())
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_string(&again).unwrap(),
            serde_json::to_string(&first).unwrap()
        );
        let log = query_lang::parse_expr(r#"{app="a"}"#).unwrap();
        let read = querier.query(&tenant, log, params).await;
        assert!(read.is_err(), "the wiped block was still readable");
    }

    /// A metric query under a `|=` filter reads whole blocks through the decode pool and
    /// the decoded-block cache, as log queries do: the blocks the filter skips leave no
    /// samples to reuse, and reading them one by one on the query's thread made reruns
    /// several times slower. Unfiltered sample-caching queries keep blocks out of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_filtered_metric_query_reads_blocks_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let Flushed {
            storage,
            querier,
            tenant,
            params,
        } = flushed_logfmt_stream(dir.path()).await;
        let unfiltered =
            query_lang::parse_expr(r#"sum(count_over_time({app="a"} | logfmt [1m]))"#).unwrap();
        querier
            .query(&tenant, unfiltered, params.clone())
            .await
            .unwrap();
        assert_eq!(
            storage.cached_bytes(),
            0,
            "an unfiltered metric query cached blocks"
        );
        let filtered =
            query_lang::parse_expr(r#"sum(count_over_time({app="a"} |= "error" | logfmt [1m]))"#)
                .unwrap();
        querier.query(&tenant, filtered, params).await.unwrap();
        assert!(
            storage.cached_bytes() > 0,
            "a filtered metric query read its blocks past the cache"
        );
    }
}
