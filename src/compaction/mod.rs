//! Compaction: merging a tenant-day's small segments into fewer, larger and more
//! compressed ones, and swapping them in without any query seeing an entry twice or not
//! at all.
//!
//! Owns choosing what to merge (the `segment_compaction_*` keys of the `compactor:`
//! section, see [`CompactionOptions`]), the merge itself — every stream's entries read
//! from the old segments' blocks, merged in timestamp order with exact duplicates
//! collapsed, and sealed again into larger blocks at a higher zstd level — writing the
//! new segment (its footer's `replaces` names the old ones), the swap in the index, and
//! deleting the old objects once no query holds them.
//!
//! It does not own when a pass runs (the compactor loop in `retention`, after each
//! retention pass), what is past retention (`retention` tells it which segments to leave
//! alone), the block and segment formats (`chunk`, `storage::segment`) nor the object
//! store and its catalog (`storage`).
//!
//! Crash safety comes from the segment format: the new segment is written whole before
//! the swap, and names the segments it replaces, so a process that dies between writing
//! it and deleting them finds both at the next start and deletes the old ones
//! (`Storage::open`). Until the new segment exists nothing has changed; if anything fails
//! before it does, the old segments stay and the merge is tried again at the next pass.
//!
//! Which segments go together: per tenant and UTC day, segments smaller than the target
//! size, smallest first; a merge takes at least `segment_compaction_min_segments` of them
//! and at most the target size of bytes, and once it has its minimum it takes a further
//! segment only if that one is no larger than everything taken so far. Without that last
//! rule a day would rewrite its one large merged segment every time a few new flushes
//! arrive; with it, merged segments grow by comparable sizes (size-tiered), so each entry
//! is rewritten a few times, not once per pass.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lode_push::{Entry, LabelSet};

use crate::chunk::{self, Compression, SealedBlock};
use crate::clock::Day;
use crate::config::CompactorConfig;
use crate::metrics::{Metrics, TenantLabels};
use crate::storage::segment::{BlockInfo, Footer, SegmentId, SegmentWriter};
use crate::storage::{self, segment_path, SegmentMeta, Storage};
use crate::tenant::TenantId;

/// Why a merge failed. The old segments are untouched whenever one is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error("sealing a merged block: {0}")]
    Chunk(#[from] chunk::Error),
    #[error("merge task failed: {0}")]
    Task(String),
    #[error("merged segment of {tenant}/{day} would hold {written} entries, not the {expected} read minus {collapsed} duplicates: nothing replaced")]
    Count {
        tenant: TenantId,
        day: Day,
        expected: u64,
        collapsed: u64,
        written: u64,
    },
}

/// What compaction merges and how it writes the result (from [`CompactorConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionOptions {
    /// `segment_compaction_min_segments`.
    pub min_segments: usize,
    /// `segment_compaction_target_size`, in bytes.
    pub target_size: u64,
    /// `segment_compaction_zstd_level`, for both frames of a block.
    pub compression: Compression,
    /// `segment_compaction_block_size`: raw bytes (lines and metadata) per block.
    pub block_size: usize,
    /// Compressed bytes after which a chunk is closed (Loki's `chunk_target_size`).
    pub chunk_size: usize,
    /// How long deleting a replaced segment waits for queries still reading it.
    pub delete_grace: Duration,
}

/// Compressed bytes per merged chunk: Loki's default `chunk_target_size` (1.5 MB).
const CHUNK_TARGET_SIZE: usize = 1_572_864;

/// A block is sealed past its size only to keep a run of equal timestamps together (so
/// duplicates meet); a run this far past the block size is split anyway.
const MAX_BLOCK_OVERSHOOT: usize = 4;

impl CompactionOptions {
    pub fn from_config(cfg: &CompactorConfig) -> CompactionOptions {
        CompactionOptions {
            min_segments: cfg.segment_compaction_min_segments.max(2),
            target_size: cfg.segment_compaction_target_size.bytes(),
            compression: Compression::at(cfg.segment_compaction_zstd_level),
            block_size: cfg.segment_compaction_block_size.as_usize().max(1),
            chunk_size: CHUNK_TARGET_SIZE,
            delete_grace: Duration::from_secs(10),
        }
    }
}

/// What one compaction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Segments merged into new ones (and deleted).
    pub compacted_segments: usize,
    /// Segments written by merges.
    pub written_segments: usize,
    /// Object bytes of the merged segments.
    pub compacted_bytes: u64,
    /// Object bytes of the segments written.
    pub written_bytes: u64,
    /// Identical entries of one stream (timestamp, line, structured metadata) stored
    /// more than once, now stored once.
    pub collapsed_entries: u64,
    /// Merges that failed; their segments stay and are tried again next pass.
    pub failed_merges: usize,
}

/// Merges small segments; see the module docs.
pub struct Compactor {
    opts: CompactionOptions,
    storage: Arc<Storage>,
    metrics: arc_swap::ArcSwapOption<Metrics>,
}

impl std::fmt::Debug for Compactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compactor")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Compactor {
    pub fn new(opts: CompactionOptions, storage: Arc<Storage>) -> Compactor {
        Compactor {
            opts,
            storage,
            metrics: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Sends `lode_compactor_*` counters to the process's registry from now on.
    pub fn set_metrics(&self, metrics: Arc<Metrics>) {
        self.metrics.store(Some(metrics));
    }

    /// One pass over every tenant: plans merges per day and runs them one at a time.
    /// Segments for which `skip` holds (retention is about to rewrite or delete them)
    /// are left alone. A failed merge is logged and counted; the others still run.
    pub async fn run_once(&self, skip: &(dyn Fn(&SegmentMeta) -> bool + Sync)) -> PassStats {
        let mut stats = PassStats::default();
        let metrics = self.metrics.load_full();
        for tenant in self.storage.tenants() {
            // Only the planned groups keep their segments: a deletion waits for every
            // other holder of a replaced segment to let go.
            let groups = plan(&self.storage.segments(&tenant), &self.opts, skip);
            let labels = TenantLabels {
                tenant: tenant.to_string(),
            };
            for group in groups {
                let segments = group.len();
                let day = group.first().map_or(Day(0), |m| m.footer.day);
                let started = Instant::now();
                match self.merge(&tenant, day, group).await {
                    Ok(m) => {
                        tracing::info!(
                            tenant = %tenant,
                            day = %day,
                            segments,
                            bytes_before = m.compacted_bytes,
                            bytes_after = m.written_bytes,
                            entries = m.entries,
                            collapsed = m.collapsed,
                            seconds = started.elapsed().as_secs_f64(),
                            "compacted segments"
                        );
                        stats.compacted_segments += segments;
                        stats.written_segments += 1;
                        stats.compacted_bytes += m.compacted_bytes;
                        stats.written_bytes += m.written_bytes;
                        stats.collapsed_entries += m.collapsed;
                        if let Some(mx) = &metrics {
                            let c = &mx.compactor;
                            c.compacted_segments
                                .get_or_create(&labels)
                                .inc_by(segments as u64);
                            c.written_segments.get_or_create(&labels).inc();
                            c.compacted_bytes
                                .get_or_create(&labels)
                                .inc_by(m.compacted_bytes);
                            c.written_bytes
                                .get_or_create(&labels)
                                .inc_by(m.written_bytes);
                        }
                    }
                    Err(e) => {
                        tracing::error!(
                            tenant = %tenant,
                            day = %day,
                            segments,
                            error = %e,
                            "segment compaction failed; the segments stay and are retried next interval"
                        );
                        stats.failed_merges += 1;
                        if let Some(mx) = &metrics {
                            mx.compactor.failures.get_or_create(&labels).inc();
                        }
                    }
                }
            }
        }
        if let Some(m) = &metrics {
            m.compactor.runs.inc();
        }
        stats
    }

    /// Merges `group` (segments of one tenant and day) into one new segment, swaps it in
    /// and deletes the old objects.
    async fn merge(
        &self,
        tenant: &TenantId,
        day: Day,
        group: Vec<Arc<SegmentMeta>>,
    ) -> Result<MergeStats, Error> {
        let id = SegmentId::new(self.storage.clock().now_ns());
        let path = segment_path(tenant, day, id);
        let (storage, opts, t, g) = (
            self.storage.clone(),
            self.opts,
            tenant.clone(),
            group.clone(),
        );
        let handle = tokio::runtime::Handle::current();
        // Decoding runs on the storage decode pool, sealing (zstd) on this blocking
        // thread; neither on the runtime's workers.
        let built =
            tokio::task::spawn_blocking(move || build(&storage, &handle, &t, day, &g, &opts))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
        let Built {
            bytes,
            footer,
            mut stats,
        } = built;
        stats.compacted_bytes = group.iter().map(|m| m.size).sum();
        stats.written_bytes = bytes.len() as u64;
        let new = self.storage.put_segment(id, path, bytes, footer).await?;
        let old: Vec<SegmentId> = group.iter().map(|m| m.id).collect();
        self.storage.replace_segments(new, &old);
        self.delete_when_unread(group).await;
        Ok(stats)
    }

    /// Deletes replaced segments once no query holds them (their `Arc` is ours alone),
    /// or after the grace period anyway: a query still reading one then fails with
    /// `storage::Error::Gone`, which asks to run it again. A failed delete is logged;
    /// the next start deletes the object (the new segment names it in `replaces`).
    async fn delete_when_unread(&self, group: Vec<Arc<SegmentMeta>>) {
        let deadline = Instant::now() + self.opts.delete_grace;
        while group.iter().any(|m| Arc::strong_count(m) > 1) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for m in &group {
            if let Err(e) = self.storage.delete_object(&m.path).await {
                tracing::error!(segment = %m.path, error = %e, "cannot delete a compacted segment; the next start deletes it");
            }
        }
    }
}

/// Groups of segments to merge, each of one day, each at least `min_segments` long and
/// at most `target_size` bytes; see the module docs for the size-tiered rule.
fn plan(
    segments: &[Arc<SegmentMeta>],
    opts: &CompactionOptions,
    skip: &(dyn Fn(&SegmentMeta) -> bool + Sync),
) -> Vec<Vec<Arc<SegmentMeta>>> {
    let mut by_day: BTreeMap<Day, Vec<Arc<SegmentMeta>>> = BTreeMap::new();
    for m in segments {
        if m.size < opts.target_size && !skip(m) {
            by_day.entry(m.footer.day).or_default().push(m.clone());
        }
    }
    let mut groups = Vec::new();
    for (_, mut small) in by_day {
        if small.len() < opts.min_segments {
            continue;
        }
        small.sort_by_key(|m| (m.size, m.id));
        let mut group: Vec<Arc<SegmentMeta>> = Vec::new();
        let mut total = 0u64;
        for m in small {
            let fits = total + m.size <= opts.target_size;
            let tiered = group.len() < opts.min_segments || m.size <= total;
            if !(fits && tiered) {
                if group.len() >= opts.min_segments {
                    groups.push(std::mem::take(&mut group));
                }
                group.clear();
                total = 0;
            }
            total += m.size;
            group.push(m);
        }
        if group.len() >= opts.min_segments {
            groups.push(group);
        }
    }
    groups
}

/// Counts of one merge.
#[derive(Debug, Default)]
struct MergeStats {
    compacted_bytes: u64,
    written_bytes: u64,
    entries: u64,
    collapsed: u64,
}

/// A merged segment, encoded, and its counts.
struct Built {
    bytes: Vec<u8>,
    footer: Footer,
    stats: MergeStats,
}

/// One stored block of a stream, in merge order: `order` is (segment, chunk, block)
/// position, so entries with equal timestamps keep the order they were written in.
struct Source {
    segment: Arc<SegmentMeta>,
    block: BlockInfo,
    order: Order,
}

/// A block's (segment, chunk, block) position; segments oldest first.
type Order = (usize, usize, usize);

/// The entries of an opened block not yet merged.
type Cursor = std::iter::Peekable<std::vec::IntoIter<Entry>>;

/// Builds the merged segment of `group` (runs on a blocking thread; `handle` runs the
/// block reads). Streams are merged one at a time, and a stream's blocks are read only
/// as the merge reaches their time range, so memory holds the encoded new segment plus
/// a few decoded blocks.
fn build(
    storage: &Arc<Storage>,
    handle: &tokio::runtime::Handle,
    tenant: &TenantId,
    day: Day,
    group: &[Arc<SegmentMeta>],
    opts: &CompactionOptions,
) -> Result<Built, Error> {
    let mut group: Vec<Arc<SegmentMeta>> = group.to_vec();
    group.sort_by_key(|m| m.id);
    let mut streams: BTreeMap<&LabelSet, Vec<Source>> = BTreeMap::new();
    let mut expected = 0u64;
    for (si, seg) in group.iter().enumerate() {
        for s in &seg.footer.streams {
            let sources = streams.entry(&s.labels).or_default();
            for (ci, c) in s.chunks.iter().enumerate() {
                for (bi, b) in c.blocks.iter().enumerate() {
                    expected += u64::from(b.meta.count);
                    sources.push(Source {
                        segment: seg.clone(),
                        block: *b,
                        order: (si, ci, bi),
                    });
                }
            }
        }
    }
    let ids: Vec<SegmentId> = group.iter().map(|m| m.id).collect();
    let capacity: u64 = group.iter().map(|m| m.size).sum();
    let mut writer =
        SegmentWriter::with_capacity(tenant, day, &ids, usize::try_from(capacity).unwrap_or(0));
    let mut stats = MergeStats::default();
    let read = |s: &Source| handle.block_on(storage.read_block_uncached(&s.segment, &s.block));
    for (labels, mut sources) in streams {
        sources.sort_by_key(|s| (s.block.meta.min_ts, s.order));
        let mut out = StreamWriter::new(labels, opts);
        merge_stream(sources, &read, |e| out.push(e, &mut writer))?;
        stats.collapsed += out.collapsed;
        stats.entries += out.written;
        out.finish(&mut writer)?;
    }
    let (bytes, footer) = writer.finish();
    // Summed as u64 per block: the footer's own total saturates at u32::MAX.
    let written: u64 = footer
        .streams
        .iter()
        .flat_map(|s| &s.chunks)
        .flat_map(|c| &c.blocks)
        .map(|b| u64::from(b.meta.count))
        .sum();
    if written != stats.entries || written + stats.collapsed != expected {
        return Err(Error::Count {
            tenant: tenant.clone(),
            day,
            expected,
            collapsed: stats.collapsed,
            written,
        });
    }
    Ok(Built {
        bytes,
        footer,
        stats,
    })
}

/// Hands `emit` every entry of `sources` (one stream's blocks, sorted by first
/// timestamp) in timestamp order; entries with equal timestamps in source order. A
/// block is read when the merge reaches its first timestamp.
fn merge_stream(
    sources: Vec<Source>,
    mut read: impl FnMut(&Source) -> Result<Vec<Entry>, storage::Error>,
    mut emit: impl FnMut(Entry) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut pending: VecDeque<Source> = sources.into();
    let mut active: Vec<(Cursor, Order)> = Vec::new();
    loop {
        let best = active
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (c, order))| c.peek().map(|e| (e.timestamp_ns, *order, i)))
            .min();
        // A block that may hold an entry at or before the best one is opened first.
        let open = match (best, pending.front()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some((ts, _, _)), Some(p)) => p.block.meta.min_ts <= ts,
        };
        if open {
            if let Some(s) = pending.pop_front() {
                let entries = read(&s)?;
                active.retain_mut(|(c, _)| c.peek().is_some());
                active.push((entries.into_iter().peekable(), s.order));
            }
            continue;
        }
        let Some((_, _, i)) = best else {
            return Ok(());
        };
        if let Some(e) = active.get_mut(i).and_then(|(c, _)| c.next()) {
            emit(e)?;
        }
    }
}

/// Cuts one stream's merged entries into blocks and chunks, collapsing exact duplicates.
struct StreamWriter<'a> {
    labels: &'a LabelSet,
    opts: &'a CompactionOptions,
    /// The open block, in time order.
    block: Vec<Entry>,
    /// Raw bytes of `block`: lines and structured metadata.
    block_bytes: usize,
    /// Entries of the current timestamp already sealed into an earlier block (only
    /// when a long run of one timestamp had to be split), for duplicate checks.
    carried: Vec<Entry>,
    /// Sealed blocks of the open chunk, and their compressed bytes.
    chunk: Vec<SealedBlock>,
    chunk_bytes: usize,
    written: u64,
    collapsed: u64,
}

impl<'a> StreamWriter<'a> {
    fn new(labels: &'a LabelSet, opts: &'a CompactionOptions) -> StreamWriter<'a> {
        StreamWriter {
            labels,
            opts,
            block: Vec::new(),
            block_bytes: 0,
            carried: Vec::new(),
            chunk: Vec::new(),
            chunk_bytes: 0,
            written: 0,
            collapsed: 0,
        }
    }

    /// Takes the next entry in time order.
    fn push(&mut self, e: Entry, writer: &mut SegmentWriter) -> Result<(), Error> {
        let last_ts = self
            .block
            .last()
            .or(self.carried.last())
            .map(|l| l.timestamp_ns);
        if last_ts == Some(e.timestamp_ns) {
            // Identical entries are adjacent among those of their timestamp.
            let mut same_ts = self
                .block
                .iter()
                .rev()
                .take_while(|l| l.timestamp_ns == e.timestamp_ns)
                .chain(self.carried.iter());
            if same_ts.any(|l| *l == e) {
                self.collapsed += 1;
                return Ok(());
            }
            if self.block_bytes >= self.opts.block_size.saturating_mul(MAX_BLOCK_OVERSHOOT) {
                // A huge run of one timestamp: split it, remembering what was sealed.
                self.carried.extend(
                    self.block
                        .iter()
                        .rev()
                        .take_while(|l| l.timestamp_ns == e.timestamp_ns)
                        .cloned(),
                );
                self.seal(writer)?;
            }
        } else {
            self.carried.clear();
            if self.block_bytes >= self.opts.block_size {
                self.seal(writer)?;
            }
        }
        self.block_bytes += chunk::entry_block_bytes(&e);
        self.block.push(e);
        self.written += 1;
        Ok(())
    }

    /// Seals the open block into the open chunk, closing the chunk once it is large.
    fn seal(&mut self, writer: &mut SegmentWriter) -> Result<(), Error> {
        if self.block.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.block);
        self.block_bytes = 0;
        let sealed = SealedBlock::seal_with(entries, self.opts.compression)?;
        self.chunk_bytes += sealed.bytes.len();
        self.chunk.push(sealed);
        if self.chunk_bytes >= self.opts.chunk_size {
            writer.add_chunk(self.labels, &self.chunk);
            self.chunk.clear();
            self.chunk_bytes = 0;
        }
        Ok(())
    }

    /// Seals what is left and writes the last chunk.
    fn finish(mut self, writer: &mut SegmentWriter) -> Result<(), Error> {
        self.seal(writer)?;
        writer.add_chunk(self.labels, &self.chunk);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
