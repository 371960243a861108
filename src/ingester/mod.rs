//! Ingester: per-tenant, per-stream head blocks, block cutting, chunk closing and flushing.
//!
//! Owns the write path after validation: the out-of-order window and exact-duplicate
//! checks, the WAL append that makes a push durable before it is acknowledged, head blocks
//! (cut into sealed zstd blocks at `chunk_block_size`), chunks (closed at
//! `chunk_target_size`, `max_chunk_age` or `chunk_idle_period`), the flush of closed chunks
//! into one segment per tenant and UTC day, and the WAL checkpoint after a flush. It also
//! replays the WAL into heads on start and broadcasts accepted entries to live tails.
//!
//! It does not own validation of labels, line sizes or rates (the distributor), the WAL and
//! chunk byte formats (`wal`, `chunk`), where segments live (`storage`) or how reads merge
//! heads with segments (the querier).
//!
//! Heads are keyed tenant → stream → UTC day, so a chunk (and so a segment) never spans
//! midnight. A stream's entries of one day live in one open chunk (sealed blocks, pending
//! blocks, and the open head block) and any closed chunks waiting for the flush loop.
//!
//! One lock guards all heads, held for checks and appends but not for compression: a full
//! head block is cut under it into a pending block whose entries stay readable, the push
//! that cut it seals it after releasing the lock, and the sealed block replaces the pending
//! one (oldest first within a chunk) under the lock again. A flush closing the chunk
//! first seals pending blocks itself, and a sealed block whose pending slot is gone is
//! dropped: every entry is read and stored exactly once either way.
//!
//! Exactly once across `kill -9`: a push is in the WAL before it is acknowledged; replay
//! puts every record back into heads, dropping entries that an already-written segment of
//! the same stream holds (the process may die after writing a segment and before the WAL
//! checkpoint that forgets its records) and exact duplicates, so nothing acknowledged is
//! lost and nothing is returned twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use lode_push::{Entry, LabelSet};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::chunk::{self, SealedBlock, ZSTD_LEVEL};
use crate::clock::{Clock, Day};
use crate::metrics::Metrics;
use crate::storage::segment::FlushChunk;
use crate::storage::Storage;
use crate::tenant::TenantId;
use crate::wal::{self, SegmentNo, Wal};

/// Largest `chunk_block_size` accepted; the chunk decoder refuses blocks much larger.
pub const MAX_BLOCK_SIZE: usize = 16 << 20;

/// Live pushes buffered per tail subscriber before it starts missing some.
const SUBSCRIBER_BUFFER: usize = 4096;

/// Discard reason of entries older than the out-of-order window allows.
pub const REASON_TOO_FAR_BEHIND: &str = "too_far_behind";

/// Discard reason of exact duplicates (same stream, timestamp and line). Loki drops them
/// without an error; they are reported so the caller can count them.
pub const REASON_DUPLICATE: &str = "duplicate";

/// `ingester:` section of the YAML config (Loki key names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngesterConfig {
    /// A chunk closes once its sealed blocks reach this many compressed bytes.
    pub chunk_target_size: usize,
    /// Lode only: once the sealed blocks held in memory (open and closed chunks of every
    /// stream) reach this many compressed bytes, the flush loop writes them all to a
    /// segment at once instead of waiting for chunks to fill, bounding the ingester's
    /// memory. 0 turns the bound off (Loki's behaviour).
    pub max_sealed_bytes: usize,
    /// A head block is cut into a sealed block once its raw entries reach this many bytes.
    pub chunk_block_size: usize,
    /// A chunk closes this long after its first entry arrived.
    #[serde(with = "humantime_serde")]
    pub max_chunk_age: Duration,
    /// A chunk closes once no entry arrived for this long.
    #[serde(with = "humantime_serde")]
    pub chunk_idle_period: Duration,
    /// How often the flush loop looks for chunks to close and flush.
    #[serde(with = "humantime_serde")]
    pub flush_check_period: Duration,
    /// How far behind a stream's newest entry an entry may be and still be accepted;
    /// unset, half of `max_chunk_age`, as Loki derives it.
    #[serde(with = "humantime_serde")]
    pub out_of_order_time_window: Option<Duration>,
    pub wal: wal::WalConfig,
}

impl Default for IngesterConfig {
    fn default() -> Self {
        IngesterConfig {
            chunk_target_size: 1_572_864,
            max_sealed_bytes: 16 << 20,
            chunk_block_size: 262_144,
            max_chunk_age: Duration::from_secs(2 * 3600),
            chunk_idle_period: Duration::from_secs(30 * 60),
            flush_check_period: Duration::from_secs(30),
            out_of_order_time_window: None,
            wal: wal::WalConfig::default(),
        }
    }
}

impl IngesterConfig {
    /// The out-of-order window in force: `out_of_order_time_window`, or else half of
    /// `max_chunk_age` (Loki's rule: 1h with the default 2h).
    pub fn out_of_order_window(&self) -> Duration {
        self.out_of_order_time_window
            .unwrap_or(self.max_chunk_age / 2)
    }

    /// Explains the first bad value and the key that sets it.
    pub fn validate(&self) -> Result<(), Error> {
        if self.chunk_block_size == 0 || self.chunk_block_size > MAX_BLOCK_SIZE {
            return Err(Error::Config(format!(
                "ingester.chunk_block_size {} is out of range: use 1 to {MAX_BLOCK_SIZE} bytes (default 262144)",
                self.chunk_block_size
            )));
        }
        if self.chunk_target_size == 0 {
            return Err(Error::Config(
                "ingester.chunk_target_size is 0: use a positive size in bytes such as 1572864"
                    .into(),
            ));
        }
        for (key, d) in [
            ("max_chunk_age", self.max_chunk_age),
            ("chunk_idle_period", self.chunk_idle_period),
            ("flush_check_period", self.flush_check_period),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!(
                    "ingester.{key} is 0s: use a positive duration such as 30s"
                )));
            }
        }
        self.wal.validate()?;
        Ok(())
    }
}

/// Why a push could not be made durable or a flush could not be written. The server
/// answers these with 500: the client should retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Wal(#[from] wal::Error),
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    #[error("{0}")]
    Config(String),
    #[error("cannot start the sealing threads: {0}")]
    Sealer(String),
}

/// The entries one push accepted for one stream, as live tails see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub tenant: TenantId,
    pub labels: LabelSet,
    pub entries: Vec<Entry>,
}

/// What a push stored and what it refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushOutcome {
    pub accepted_entries: usize,
    /// Line bytes of the accepted entries.
    pub accepted_bytes: usize,
    pub rejected: Vec<Rejected>,
}

/// Entries of one stream refused for one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub labels: LabelSet,
    pub entries: usize,
    /// Line bytes of the refused entries.
    pub bytes: usize,
    /// Stable snake_case discard reason: `too_far_behind` or `duplicate`.
    pub reason: &'static str,
    /// Loki's message for the first refused entry.
    pub message: String,
}

/// A chunk of one stream and day being filled or waiting for the flush loop.
struct Chunk {
    /// Unique per process, so a flush can find the chunks it wrote.
    id: u64,
    blocks: Vec<SealedBlock>,
    /// Compressed bytes of `blocks`.
    sealed_bytes: usize,
    head: Vec<Entry>,
    /// Raw bytes of `head` (lines and structured metadata), as `chunk_block_size` counts
    /// them.
    head_bytes: usize,
    /// Head blocks cut and being sealed outside the heads lock, oldest first; they join
    /// `blocks`, in this order, once sealed.
    pending: Vec<Pending>,
    /// Dedup hashes of every entry in the chunk, removed from the day's set on flush.
    hashes: Vec<u64>,
    created_ns: i64,
    last_append_ns: i64,
    /// Oldest WAL segment holding an entry of `blocks`.
    min_wal: Option<SegmentNo>,
    /// Oldest WAL segment holding an entry of `head`.
    head_min_wal: Option<SegmentNo>,
}

impl Chunk {
    fn new(id: u64, now_ns: i64) -> Chunk {
        Chunk {
            id,
            blocks: Vec::new(),
            sealed_bytes: 0,
            head: Vec::new(),
            head_bytes: 0,
            pending: Vec::new(),
            hashes: Vec::new(),
            created_ns: now_ns,
            last_append_ns: now_ns,
            min_wal: None,
            head_min_wal: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.pending.is_empty() && self.head.is_empty()
    }

    /// Seals the pending blocks and the open head block here and now (closing a chunk for
    /// a flush), adding their compressed bytes to `sealed_total`.
    fn cut(&mut self, sealed_total: &mut usize) -> Result<(), chunk::Error> {
        let (added, failed) = self.drain_pending(true, usize::MAX);
        *sealed_total += added;
        if let Some(e) = failed {
            return Err(e);
        }
        if self.head.is_empty() {
            return Ok(());
        }
        let block = match SealedBlock::try_seal(std::mem::take(&mut self.head), ZSTD_LEVEL) {
            Ok(block) => block,
            Err((e, entries)) => {
                // Acknowledged entries stay in the head block (reads still find them, the
                // WAL keeps them) rather than being lost with a block that cannot be made.
                self.head = entries;
                return Err(e);
            }
        };
        let added = block.bytes.len();
        self.sealed_bytes += added;
        *sealed_total += added;
        self.blocks.push(block);
        self.head_bytes = 0;
        self.min_wal = min_segment(self.min_wal, self.head_min_wal.take());
        Ok(())
    }

    /// Cuts the open head block for sealing outside the lock: its entries, sorted by
    /// timestamp (stable), become pending block `id` and stay readable until the block
    /// replaces them.
    fn freeze_head(&mut self, id: u64) -> Arc<Vec<Entry>> {
        let mut entries = std::mem::take(&mut self.head);
        entries.sort_by_key(|e| e.timestamp_ns);
        let entries = Arc::new(entries);
        self.pending.push(Pending {
            id,
            entries: entries.clone(),
            bytes: std::mem::take(&mut self.head_bytes),
            min_wal: self.head_min_wal.take(),
            sealed: None,
        });
        entries
    }

    /// Moves up to `limit` sealed pending blocks into `blocks`, oldest first, stopping at
    /// the first one not sealed yet; with `seal_now`, seals that one here instead
    /// (stopping at a failure). Returns the compressed bytes added and the failure, if any.
    fn drain_pending(&mut self, seal_now: bool, limit: usize) -> (usize, Option<chunk::Error>) {
        let mut added = 0;
        let mut moved = 0;
        while let Some(p) = self.pending.first_mut() {
            if moved == limit {
                break;
            }
            moved += 1;
            let block = match p.sealed.take() {
                Some(block) => block,
                None if seal_now => match SealedBlock::seal_sorted(&p.entries, ZSTD_LEVEL) {
                    Ok(block) => block,
                    Err(e) => return (added, Some(e)),
                },
                None => break,
            };
            let p = self.pending.remove(0);
            added += block.bytes.len();
            self.sealed_bytes += block.bytes.len();
            self.blocks.push(block);
            self.min_wal = min_segment(self.min_wal, p.min_wal);
        }
        (added, None)
    }

    /// Moves the sealed blocks (and their entries' dedup hashes) into a new chunk `id`,
    /// leaving the open head block here; `None` when there are no sealed blocks.
    fn split_sealed(&mut self, id: u64) -> Option<Chunk> {
        if self.blocks.is_empty() {
            return None;
        }
        let sealed_entries: usize = self.blocks.iter().map(|b| b.meta.count as usize).sum();
        let hashes: Vec<u64> = self
            .hashes
            .drain(..sealed_entries.min(self.hashes.len()))
            .collect();
        Some(Chunk {
            id,
            blocks: std::mem::take(&mut self.blocks),
            sealed_bytes: std::mem::take(&mut self.sealed_bytes),
            head: Vec::new(),
            head_bytes: 0,
            pending: Vec::new(),
            hashes,
            created_ns: self.created_ns,
            last_append_ns: self.last_append_ns,
            min_wal: self.min_wal.take(),
            head_min_wal: None,
        })
    }

    /// Oldest WAL segment holding any of the chunk's entries.
    fn oldest_wal(&self) -> Option<SegmentNo> {
        self.pending
            .iter()
            .fold(min_segment(self.min_wal, self.head_min_wal), |m, p| {
                min_segment(m, p.min_wal)
            })
    }
}

/// A head block cut and being sealed outside the heads lock by the push that cut it.
struct Pending {
    /// Unique per process: the sealing push finds its block by it.
    id: u64,
    /// The block's entries, sorted by timestamp; reads take them from here until the
    /// block is in `Chunk::blocks`.
    entries: Arc<Vec<Entry>>,
    /// Raw bytes of `entries`, as `chunk_block_size` counts them.
    bytes: usize,
    /// Oldest WAL segment holding one of `entries`.
    min_wal: Option<SegmentNo>,
    /// The sealed block, when it is done but an older pending block is not yet.
    sealed: Option<SealedBlock>,
}

/// Most head blocks cut by pushes that may wait for the sealing pool at once.
const SEAL_QUEUE_BLOCKS: u32 = 32;

/// The threads that compress cut head blocks, and the bound on blocks waiting for them.
struct Sealer {
    pool: rayon_core::ThreadPool,
    /// One permit per block queued or being sealed.
    permits: Arc<tokio::sync::Semaphore>,
}

impl Sealer {
    fn new() -> Result<Sealer, Error> {
        // Compression is about a fifth of ingest CPU: half the cores are plenty.
        let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let pool = rayon_core::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("lode-seal-{i}"))
            // A panicking job drops its permit; its entries stay pending for the flush.
            .panic_handler(|_| {})
            .build()
            .map_err(|e| Error::Sealer(e.to_string()))?;
        Ok(Sealer {
            pool,
            permits: Arc::new(tokio::sync::Semaphore::new(SEAL_QUEUE_BLOCKS as usize)),
        })
    }
}

/// A pending block for the push that cut it to seal once the heads lock is released.
struct SealJob {
    day: Day,
    id: u64,
    entries: Arc<Vec<Entry>>,
}

fn min_segment(a: Option<SegmentNo>, b: Option<SegmentNo>) -> Option<SegmentNo> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A stream's unflushed entries of one UTC day.
struct DayHead {
    open: Chunk,
    closed: Vec<Chunk>,
    /// Dedup keys of every unflushed entry of the day, and of entries reserved by pushes
    /// whose WAL append is still in flight.
    seen: Seen,
}

impl DayHead {
    fn new() -> DayHead {
        DayHead {
            open: Chunk::new(0, 0),
            closed: Vec::new(),
            seen: Seen::default(),
        }
    }
}

/// The dedup keys (timestamp, [`entry_hash`]) of a day's entries. Entries mostly arrive
/// in time order, and those only append to a sorted run; the few arriving behind the
/// run's end go to a hash set. A hash set of every key cost 6 % of ingest CPU, most of it
/// cache misses across sets of tens of thousands of keys.
#[derive(Default)]
struct Seen {
    /// Keys in timestamp order.
    ordered: Vec<(i64, u64)>,
    /// Hashes of entries that arrived older than the end of `ordered`.
    behind: HashSet<u64, foldhash::fast::RandomState>,
    /// The newest timestamp ever put in `behind` (not lowered by removals).
    behind_newest: i64,
}

impl Seen {
    /// Adds a key; false when it is already there.
    fn insert(&mut self, ts: i64, h: u64) -> bool {
        let last = self.ordered.last().map_or(i64::MIN, |&(t, _)| t);
        if ts > last && (self.behind.is_empty() || ts > self.behind_newest) {
            self.ordered.push((ts, h));
            return true;
        }
        if self.contains(ts, h) {
            return false;
        }
        if ts >= last {
            self.ordered.push((ts, h));
        } else {
            self.behind.insert(h);
            self.behind_newest = self.behind_newest.max(ts);
        }
        true
    }

    fn contains(&self, ts: i64, h: u64) -> bool {
        self.same_ts(ts).iter().any(|&(_, x)| x == h) || self.behind.contains(&h)
    }

    /// The keys of `ordered` with timestamp `ts`.
    fn same_ts(&self, ts: i64) -> &[(i64, u64)] {
        self.ordered.get(self.same_ts_range(ts)).unwrap_or_default()
    }

    /// Where the keys of `ordered` with timestamp `ts` are.
    fn same_ts_range(&self, ts: i64) -> std::ops::Range<usize> {
        let from = self.ordered.partition_point(|&(t, _)| t < ts);
        from..self.ordered.partition_point(|&(t, _)| t <= ts)
    }

    /// Removes one key (a reservation whose WAL append failed).
    fn remove(&mut self, ts: i64, h: u64) {
        let range = self.same_ts_range(ts);
        let from = range.start;
        let at = self
            .ordered
            .get(range)
            .and_then(|keys| keys.iter().position(|&(_, x)| x == h));
        match at {
            Some(i) => {
                self.ordered.remove(from + i);
            }
            None => {
                self.behind.remove(&h);
            }
        }
    }

    /// Removes the keys of flushed entries.
    fn remove_all(&mut self, hashes: &[u64]) {
        let gone: HashSet<u64, foldhash::fast::RandomState> = hashes.iter().copied().collect();
        self.ordered.retain(|(_, h)| !gone.contains(h));
        self.behind.retain(|h| !gone.contains(h));
    }

    fn is_empty(&self) -> bool {
        self.ordered.is_empty() && self.behind.is_empty()
    }
}

/// One stream of one tenant.
struct StreamHead {
    /// Newest timestamp accepted; the out-of-order window trails it.
    newest_ts: i64,
    days: BTreeMap<Day, DayHead>,
}

impl StreamHead {
    fn new() -> StreamHead {
        StreamHead {
            newest_ts: i64::MIN,
            days: BTreeMap::new(),
        }
    }
}

/// Entries on their way into heads.
struct Arriving {
    entries: Vec<Entry>,
    /// The entries' dedup hashes, already in their day's set (by [`Heads::check`]);
    /// `None` (WAL replay): computed and added on append.
    reserved: Option<Vec<u64>>,
}

/// Every tenant's heads; one lock, held only for in-memory work (never across an await)
/// and never while a head block is compressed: a push cuts full head blocks under it and
/// seals them after releasing it ([`Pending`]).
#[derive(Default)]
struct Heads {
    /// hashbrown's map for `entry_ref`: a stream's keys are cloned only on its first push.
    tenants: hashbrown::HashMap<TenantId, hashbrown::HashMap<LabelSet, StreamHead>>,
    next_chunk_id: u64,
    next_seal_id: u64,
    /// Compressed bytes of every sealed block held, in open and closed chunks.
    sealed_total: usize,
}

impl Heads {
    /// Appends entries (already checked) to the open chunk of their day, cutting head
    /// blocks by size; returns the cut blocks for the caller to seal outside the lock and
    /// hand to [`Heads::install`].
    fn append(
        &mut self,
        cfg: &IngesterConfig,
        tenant: &TenantId,
        labels: &LabelSet,
        arriving: Arriving,
        wal_segment: SegmentNo,
        now_ns: i64,
    ) -> Vec<SealJob> {
        let Arriving { entries, reserved } = arriving;
        let mut jobs = Vec::new();
        let Heads {
            tenants,
            next_chunk_id,
            next_seal_id,
            ..
        } = self;
        let stream = stream_head(tenants, tenant, labels);
        let mut reserved = reserved.map(Vec::into_iter);
        for e in entries {
            let e_ts = e.timestamp_ns;
            stream.newest_ts = stream.newest_ts.max(e.timestamp_ns);
            let day = stream
                .days
                .entry(Day::of_ns(e.timestamp_ns))
                .or_insert_with(DayHead::new);
            let c = &mut day.open;
            if c.is_empty() {
                // A chunk's age counts from its first entry.
                *next_chunk_id += 1;
                c.id = *next_chunk_id;
                c.created_ns = now_ns;
            }
            let h = match reserved.as_mut().and_then(Iterator::next) {
                Some(h) => h,
                None => {
                    let h = entry_hash(&e);
                    day.seen.insert(e.timestamp_ns, h);
                    h
                }
            };
            c.hashes.push(h);
            c.head_bytes += chunk::entry_block_bytes(&e);
            c.head.push(e);
            c.last_append_ns = now_ns;
            c.head_min_wal = min_segment(c.head_min_wal, Some(wal_segment));
            if c.head_bytes >= cfg.chunk_block_size {
                *next_seal_id += 1;
                jobs.push(SealJob {
                    day: Day::of_ns(e_ts),
                    id: *next_seal_id,
                    entries: c.freeze_head(*next_seal_id),
                });
            }
        }
        jobs
    }

    /// Puts a block sealed outside the lock in place of its pending entries (once every
    /// older pending block of its chunk is in place too), and closes the chunk once its
    /// sealed blocks reach `chunk_target_size`. A block whose chunk was closed meanwhile
    /// (a flush sealed it itself) is dropped.
    fn install(
        &mut self,
        cfg: &IngesterConfig,
        tenant: &TenantId,
        labels: &LabelSet,
        job: &SealJob,
        sealed: Result<SealedBlock, chunk::Error>,
        now_ns: i64,
    ) {
        let Some(day) = self
            .tenants
            .get_mut(tenant)
            .and_then(|t| t.get_mut(labels))
            .and_then(|s| s.days.get_mut(&job.day))
        else {
            return;
        };
        let Some(p) = day.open.pending.iter_mut().find(|p| p.id == job.id) else {
            return;
        };
        match sealed {
            Ok(block) => p.sealed = Some(block),
            // Only an entry set over the block size limit fails; its entries stay pending,
            // where reads still find them, and the flush tries again.
            Err(err) => {
                tracing::error!(%tenant, %labels, error = %err, "cannot cut head block");
                return;
            }
        }
        // One block at a time, so a chunk closes as soon as its blocks reach the target,
        // as when blocks were sealed under the lock.
        loop {
            let (added, _) = day.open.drain_pending(false, 1);
            if added == 0 {
                break;
            }
            self.sealed_total += added;
            if day.open.sealed_bytes >= cfg.chunk_target_size {
                // Entries appended after the cut stay open, in what is now a new chunk.
                self.next_chunk_id += 1;
                if let Some(full) = day.open.split_sealed(self.next_chunk_id) {
                    day.closed.push(full);
                }
                day.open.created_ns = now_ns;
            }
        }
    }
}

/// The head of a tenant's stream, made on its first entry (cloning the keys only then).
fn stream_head<'a>(
    tenants: &'a mut hashbrown::HashMap<TenantId, hashbrown::HashMap<LabelSet, StreamHead>>,
    tenant: &TenantId,
    labels: &LabelSet,
) -> &'a mut StreamHead {
    tenants
        .entry_ref(tenant)
        .or_default()
        .entry_ref(labels)
        .or_insert_with(StreamHead::new)
}

/// The oldest and newest timestamps of `entries`, for the index's head ranges.
fn time_range(entries: &[Entry]) -> Option<(i64, i64)> {
    let min = entries.iter().map(|e| e.timestamp_ns).min()?;
    let max = entries.iter().map(|e| e.timestamp_ns).max()?;
    Some((min, max))
}

/// The dedup key of an entry: a 64-bit hash of its timestamp and line. Fixed-seeded so
/// it is stable across restarts (WAL replay compares against flushed entries), and
/// foldhash's quality variant rather than SipHash, which was 7 % of ingest CPU.
fn entry_hash(e: &Entry) -> u64 {
    use std::hash::BuildHasher;
    let mut h = foldhash::quality::FixedState::with_seed(0x6c6f_6465_6465_6475).build_hasher();
    e.timestamp_ns.hash(&mut h);
    e.line.hash(&mut h);
    h.finish()
}

fn rfc3339(ts_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Closed chunks of one tenant and day picked for one segment.
struct FlushBatch {
    tenant: TenantId,
    day: Day,
    chunks: Vec<(LabelSet, u64, FlushChunk)>,
}

/// The ingester: heads of every tenant behind the WAL.
pub struct Ingester {
    cfg: IngesterConfig,
    wal: Wal,
    storage: Arc<Storage>,
    clock: Arc<dyn Clock>,
    heads: Mutex<Heads>,
    /// Pushes hold it shared from WAL append to head append; a WAL checkpoint holds it
    /// exclusively, so no appended-but-not-yet-in-heads record is forgotten.
    gate: tokio::sync::RwLock<()>,
    /// One flush at a time (the loop and `flush_all`).
    flushing: tokio::sync::Mutex<()>,
    /// Raised by a push that left `max_sealed_bytes` or more sealed in memory; wakes the
    /// flush loop before its next period.
    pressure: Arc<tokio::sync::Notify>,
    /// Compresses the head blocks pushes cut, after the push is answered.
    sealer: Sealer,
    /// This ingester, for the sealing jobs pushes hand to `sealer`.
    this: Weak<Ingester>,
    tx: broadcast::Sender<Arc<Pushed>>,
    /// Where counters go once the server hands over its registry.
    metrics: arc_swap::ArcSwapOption<Metrics>,
    /// WAL segments whose torn or corrupt tail was cut at startup, counted once metrics
    /// are wired.
    replay_truncations: u64,
}

impl std::fmt::Debug for Ingester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingester")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Ingester {
    /// Opens the WAL under `wal_dir`, replays it into heads (truncating a torn tail), and
    /// registers head streams in `storage.index()`.
    pub async fn open(
        cfg: IngesterConfig,
        wal_dir: PathBuf,
        storage: Arc<Storage>,
    ) -> Result<Arc<Ingester>, Error> {
        let mut cfg = cfg;
        cfg.wal.dir = wal_dir;
        cfg.validate()?;
        let wal_cfg = cfg.wal.clone();
        let (wal, records, replay_truncations) = tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            let opened = Wal::open(&wal_cfg, |n, r| records.push((n, r)));
            opened.map(|(wal, stats)| (wal, stats, records))
        })
        .await
        .map_err(|e| {
            Error::Wal(wal::Error::Io {
                action: "replay",
                path: cfg.wal.dir.clone(),
                reason: e.to_string(),
            })
        })?
        .map(|(wal, stats, records)| {
            if stats.records > 0 || stats.truncated_bytes > 0 {
                tracing::info!(
                    segments = stats.segments,
                    records = stats.records,
                    truncated_bytes = stats.truncated_bytes,
                    "replayed wal"
                );
            }
            (wal, records, stats.truncated_segments)
        })?;
        let clock = storage.clock().clone();
        let (tx, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let sealer = Sealer::new()?;
        let ingester = Arc::new_cyclic(|this| Ingester {
            cfg,
            wal,
            storage,
            clock,
            heads: Mutex::new(Heads::default()),
            gate: tokio::sync::RwLock::new(()),
            flushing: tokio::sync::Mutex::new(()),
            pressure: Arc::new(tokio::sync::Notify::new()),
            sealer,
            this: this.clone(),
            tx,
            metrics: arc_swap::ArcSwapOption::empty(),
            replay_truncations,
        });
        ingester.replay(records).await?;
        Ok(ingester)
    }

    /// Puts replayed WAL records back into heads, skipping what segments already hold.
    async fn replay(&self, records: Vec<(SegmentNo, wal::Record)>) -> Result<(), Error> {
        let mut flushed: HashMap<(TenantId, LabelSet, Day), HashSet<u64>> = HashMap::new();
        for (segment, record) in records {
            let mut keep = Vec::with_capacity(record.entries.len());
            for e in record.entries {
                let key = (
                    record.tenant.clone(),
                    record.labels.clone(),
                    Day::of_ns(e.timestamp_ns),
                );
                if !flushed.contains_key(&key) {
                    let hashes = self.flushed_hashes(&key.0, &key.1, key.2).await?;
                    flushed.insert(key.clone(), hashes);
                }
                let h = entry_hash(&e);
                if flushed.get(&key).is_some_and(|s| s.contains(&h)) {
                    continue;
                }
                keep.push(e);
            }
            let now = self.clock.now_ns();
            let mut heads = self.heads.lock();
            keep.retain(|e| !heads.is_seen(&record.tenant, &record.labels, e));
            if keep.is_empty() {
                continue;
            }
            let range = time_range(&keep);
            let jobs = heads.append(
                &self.cfg,
                &record.tenant,
                &record.labels,
                Arriving {
                    entries: keep,
                    reserved: None,
                },
                segment,
                now,
            );
            drop(heads);
            self.seal(&record.tenant, vec![(record.labels.clone(), jobs)]);
            if let Some((min, max)) = range {
                self.storage
                    .index()
                    .note_head(&record.tenant, &record.labels, min, max);
            }
        }
        Ok(())
    }

    /// Dedup hashes of a stream's entries of one day already in segments.
    async fn flushed_hashes(
        &self,
        tenant: &TenantId,
        labels: &LabelSet,
        day: Day,
    ) -> Result<HashSet<u64>, Error> {
        let index = self.storage.index();
        let id = index.stream_id(tenant, labels);
        let mut out = HashSet::new();
        for sc in index.segment_chunks(tenant, id, day.start_ns(), day.end_ns()) {
            let Some(info) = sc.info() else { continue };
            for block in &info.blocks {
                for e in self.storage.read_block(&sc.segment, block).await?.iter() {
                    out.insert(entry_hash(e));
                }
            }
        }
        Ok(out)
    }

    /// Appends already-validated streams of one tenant: out-of-order window and exact
    /// duplicate checks, WAL append + fsync (per `wal.fsync`) BEFORE returning Ok, head
    /// append, `index.note_head`, broadcast to subscribers. Entries rejected per stream are
    /// reported in `PushOutcome::rejected` (partial accept); Err only for WAL/IO failure.
    pub async fn push(
        &self,
        tenant: &TenantId,
        streams: Vec<(LabelSet, Vec<Entry>)>,
    ) -> Result<PushOutcome, Error> {
        let mut outcome = PushOutcome::default();
        let window = i64::try_from(self.cfg.out_of_order_window().as_nanos()).unwrap_or(i64::MAX);
        let _gate = self.gate.read().await;
        // Check and reserve under the lock, so two concurrent pushes of one entry cannot
        // both pass the duplicate check.
        let mut accepted: Vec<(LabelSet, Vec<Entry>)> = Vec::with_capacity(streams.len());
        let mut reserved: Vec<Vec<u64>> = Vec::with_capacity(streams.len());
        // Hashed before taking the lock, which concurrent pushes wait for.
        let hashes: Vec<Vec<u64>> = streams
            .iter()
            .map(|(_, entries)| entries.iter().map(entry_hash).collect())
            .collect();
        {
            let mut heads = self.heads.lock();
            for ((labels, entries), hashes) in streams.into_iter().zip(hashes) {
                let (keep, hashes, rejected) =
                    heads.check(tenant, &labels, entries, hashes, window);
                outcome.rejected.extend(rejected);
                if !keep.is_empty() {
                    accepted.push((labels, keep));
                    reserved.push(hashes);
                }
            }
        }
        if accepted.is_empty() {
            return Ok(outcome);
        }
        let mut framed = self.wal.buffer(
            accepted
                .iter()
                .map(|(labels, entries)| wal::record_len_hint(tenant, labels, entries))
                .sum(),
        );
        let mut encoded = Ok(());
        for (labels, entries) in &accepted {
            encoded =
                encoded.and_then(|()| wal::encode_record(&mut framed, tenant, labels, entries));
        }
        let framed_bytes = framed.len() as u64;
        let appended = match encoded {
            Ok(()) => self.wal.append(framed).await,
            Err(e) => Err(e),
        };
        if appended.is_ok() && self.cfg.wal.enabled {
            if let Some(m) = self.metrics.load().as_ref() {
                m.wal.records.inc_by(accepted.len() as u64);
                m.wal.bytes_written.inc_by(framed_bytes);
            }
        }
        let segment = match appended {
            Ok(n) => n,
            Err(e) => {
                self.heads.lock().unreserve(tenant, &accepted, &reserved);
                return Err(e.into());
            }
        };
        let now = self.clock.now_ns();
        // Entries move into the heads; live tail, when anyone listens, gets a copy.
        let subscribed = self.tx.receiver_count() > 0;
        let mut pushed = Vec::with_capacity(accepted.len());
        let mut cut = Vec::new();
        {
            let mut heads = self.heads.lock();
            for ((labels, entries), hashes) in accepted.into_iter().zip(reserved) {
                outcome.accepted_entries += entries.len();
                outcome.accepted_bytes += entries.iter().map(|e| e.line.len()).sum::<usize>();
                let range = time_range(&entries);
                let copy = subscribed.then(|| entries.clone());
                let arriving = Arriving {
                    entries,
                    reserved: Some(hashes),
                };
                let jobs = heads.append(&self.cfg, tenant, &labels, arriving, segment, now);
                if !jobs.is_empty() {
                    cut.push((labels.clone(), jobs));
                }
                pushed.push((labels, range, copy));
            }
        }
        drop(_gate);
        self.seal_later(tenant, cut).await;
        for (labels, range, copy) in pushed {
            if let Some((min, max)) = range {
                self.storage.index().note_head(tenant, &labels, min, max);
            }
            if let Some(entries) = copy {
                // Every listener may have gone since; that is not an error.
                let _ = self.tx.send(Arc::new(Pushed {
                    tenant: tenant.clone(),
                    labels,
                    entries,
                }));
            }
        }
        Ok(outcome)
    }

    /// Hands head blocks a push cut to the sealing pool and returns once it has taken
    /// them: they are compressed outside the heads lock and after the push is answered, so
    /// neither concurrent pushes nor the client wait for it, and the sealing fills the
    /// time pushes spend waiting for the WAL's fsync. Their entries stay readable as
    /// pending blocks meanwhile (and a flush seals them itself). A push waits while
    /// [`SEAL_QUEUE_BLOCKS`] blocks are already queued, so a pool that falls behind slows
    /// pushes instead of piling up unsealed entries.
    async fn seal_later(&self, tenant: &TenantId, cut: Vec<(LabelSet, Vec<SealJob>)>) {
        let blocks = cut.iter().map(|(_, jobs)| jobs.len()).sum::<usize>();
        if blocks == 0 {
            return;
        }
        let wanted = u32::try_from(blocks.min(SEAL_QUEUE_BLOCKS as usize)).unwrap_or(1);
        let permit = self.sealer.permits.clone().acquire_many_owned(wanted).await;
        let (Ok(permit), Some(me)) = (permit, self.this.upgrade()) else {
            // Neither happens while the ingester lives (its semaphore is never closed).
            if self.seal(tenant, cut) {
                self.pressure.notify_one();
            }
            return;
        };
        let tenant = tenant.clone();
        self.sealer.pool.spawn(move || {
            if me.seal(&tenant, cut) {
                me.pressure.notify_one();
            }
            drop(permit);
        });
    }

    /// Waits until every block handed to the sealing pool is in place (tests: a flush
    /// seals pending blocks itself, so nothing else needs to wait).
    #[cfg(test)]
    pub(crate) async fn sealed(&self) {
        // Holding every permit means no sealing job is queued or running.
        let all = self.sealer.permits.acquire_many(SEAL_QUEUE_BLOCKS).await;
        drop(all);
    }

    /// Seals head blocks that a push or replay cut, outside the heads lock, and puts them
    /// in place; true when the sealed blocks held now reach `max_sealed_bytes`.
    fn seal(&self, tenant: &TenantId, cut: Vec<(LabelSet, Vec<SealJob>)>) -> bool {
        if cut.is_empty() {
            return false;
        }
        let sealed: Vec<(&LabelSet, &SealJob, Result<SealedBlock, chunk::Error>)> = cut
            .iter()
            .flat_map(|(labels, jobs)| {
                jobs.iter().map(move |job| {
                    (
                        labels,
                        job,
                        SealedBlock::seal_sorted(&job.entries, ZSTD_LEVEL),
                    )
                })
            })
            .collect();
        let now = self.clock.now_ns();
        let mut heads = self.heads.lock();
        for (labels, job, block) in sealed {
            heads.install(&self.cfg, tenant, labels, job, block, now);
        }
        self.cfg.max_sealed_bytes > 0 && heads.sealed_total >= self.cfg.max_sealed_bytes
    }

    /// Unflushed entries (open head block + sealed blocks of unflushed chunks) of one
    /// stream with `start_ns <= ts < end_ns`, sorted by timestamp ascending (ties in push
    /// order).
    pub fn head_entries(
        &self,
        tenant: &TenantId,
        labels: &LabelSet,
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<Entry> {
        if start_ns >= end_ns {
            return Vec::new();
        }
        let in_range = |e: &Entry| e.timestamp_ns >= start_ns && e.timestamp_ns < end_ns;
        let mut blocks: Vec<SealedBlock> = Vec::new();
        let mut pending: Vec<Arc<Vec<Entry>>> = Vec::new();
        let mut out: Vec<Entry> = Vec::new();
        {
            let heads = self.heads.lock();
            let Some(stream) = heads.tenants.get(tenant).and_then(|t| t.get(labels)) else {
                return Vec::new();
            };
            for (_, day) in stream
                .days
                .range(Day::of_ns(start_ns)..=Day::of_ns(end_ns - 1))
            {
                for c in day.closed.iter().chain(std::iter::once(&day.open)) {
                    blocks.extend(
                        c.blocks
                            .iter()
                            .filter(|b| b.meta.overlaps(start_ns, end_ns))
                            .cloned(),
                    );
                    pending.extend(c.pending.iter().map(|p| p.entries.clone()));
                    // Heads are newer than the chunk's blocks; keep them after in push
                    // order by decoding blocks first below.
                    out.extend(c.head.iter().filter(|e| in_range(e)).cloned());
                }
            }
        }
        // Blocks were pushed before any open head entry of their chunk, and chunks of a
        // day in order; a stable sort then keeps push order among equal timestamps.
        let mut all = Vec::with_capacity(out.len());
        for b in &blocks {
            match b.entries() {
                Ok(entries) => all.extend(entries.into_iter().filter(|e| in_range(e))),
                Err(err) => tracing::error!(error = %err, "cannot decode a sealed head block"),
            }
        }
        for entries in &pending {
            all.extend(entries.iter().filter(|e| in_range(e)).cloned());
        }
        all.extend(out);
        all.sort_by_key(|e| e.timestamp_ns);
        all
    }

    /// Sends `lode_ingester_*` counters to the process's registry from now on. Refused
    /// entries (`too_far_behind`, `duplicate`) are in [`PushOutcome::rejected`]; the
    /// caller counts those as discards.
    pub fn set_metrics(&self, metrics: Arc<Metrics>) {
        self.wal.observe_fsync(metrics.wal.fsync_duration.clone());
        metrics.wal.corruptions.inc_by(self.replay_truncations);
        self.metrics.store(Some(metrics));
    }

    /// Live pushes, for `/loki/api/v1/tail`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Pushed>> {
        self.tx.subscribe()
    }

    /// Spawns the flush loop (every flush_check_period: close chunks by size/age/idle,
    /// write closed chunks of a tenant/day as one segment via `storage.write_segment`, add
    /// to the index, clear heads, checkpoint the WAL; and at once whenever a push leaves
    /// `max_sealed_bytes` sealed in memory: flush every sealed block). The loop ends when
    /// the ingester is dropped.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Ingester> = Arc::downgrade(self);
        let period = self.cfg.flush_check_period;
        let pressure = self.pressure.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let pressed = tokio::select! {
                    _ = tick.tick() => false,
                    () = pressure.notified() => true,
                };
                let Some(ingester) = weak.upgrade() else {
                    return;
                };
                let flushed = if pressed {
                    ingester.flush_sealed().await
                } else {
                    ingester.flush_due().await
                };
                drop(ingester);
                if let Err(e) = flushed {
                    tracing::error!(error = %e, "flush failed; retrying next period");
                    // Unwritten chunks keep memory over the bound, so every push would
                    // wake the loop again: wait a period before the next attempt.
                    tokio::time::sleep(period).await;
                }
            }
        })
    }

    /// Flushes every sealed block, leaving only open head blocks in memory (what the flush
    /// loop does under memory pressure).
    pub async fn flush_sealed(&self) -> Result<(), Error> {
        let _one = self.flushing.lock().await;
        {
            let mut heads = self.heads.lock();
            // Pushes during the previous flush woke the loop again; if that flush brought
            // memory back under the bound there is nothing to do yet.
            if heads.sealed_total < self.cfg.max_sealed_bytes {
                return Ok(());
            }
            heads.close_sealed();
        }
        self.flush_closed().await
    }

    /// Closes chunks due by age or idleness and flushes every closed chunk.
    pub async fn flush_due(&self) -> Result<(), Error> {
        let _one = self.flushing.lock().await;
        let now = self.clock.now_ns();
        let max_age = i64::try_from(self.cfg.max_chunk_age.as_nanos()).unwrap_or(i64::MAX);
        let idle = i64::try_from(self.cfg.chunk_idle_period.as_nanos()).unwrap_or(i64::MAX);
        self.heads.lock().close_chunks(|c| {
            now.saturating_sub(c.created_ns) >= max_age
                || now.saturating_sub(c.last_append_ns) >= idle
        });
        self.flush_closed().await
    }

    /// Closes and flushes every head now (graceful shutdown, tests, `POST /flush`).
    pub async fn flush_all(&self) -> Result<(), Error> {
        let _one = self.flushing.lock().await;
        self.heads.lock().close_chunks(|_| true);
        self.flush_closed().await
    }

    /// Writes every closed chunk, one segment per tenant and day, then forgets them and
    /// checkpoints the WAL.
    async fn flush_closed(&self) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let batches = self.heads.lock().closed_batches();
        let flushed_any = !batches.is_empty();
        let metrics = self.metrics.load_full();
        let mut first_err = None;
        for batch in batches {
            let ids: Vec<(LabelSet, u64)> = batch
                .chunks
                .iter()
                .map(|(l, id, _)| (l.clone(), *id))
                .collect();
            let chunks: Vec<FlushChunk> = batch.chunks.into_iter().map(|(_, _, c)| c).collect();
            match self
                .storage
                .write_segment(&batch.tenant, batch.day, chunks, Vec::new(), Vec::new())
                .await
            {
                Ok(segment) => {
                    if let Some(m) = &metrics {
                        record_flush(m, &segment.footer);
                    }
                    let emptied = self
                        .heads
                        .lock()
                        .remove_flushed(&batch.tenant, batch.day, &ids);
                    for labels in emptied {
                        self.storage
                            .index()
                            .clear_head(&batch.tenant, &labels, batch.day);
                    }
                }
                Err(e) => {
                    if let Some(m) = &metrics {
                        m.ingester.flush_failures.inc();
                    }
                    tracing::error!(tenant = %batch.tenant, day = %batch.day, error = %e, "segment write failed");
                    first_err.get_or_insert(Error::from(e));
                }
            }
        }
        {
            let _excl = self.gate.write().await;
            let keep_from = self.heads.lock().oldest_wal_segment();
            self.wal.checkpoint(keep_from).await?;
        }
        if let Some(m) = &metrics {
            if flushed_any {
                m.ingester
                    .flush_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            let heads = self.heads.lock();
            let (streams, bytes) = heads.usage();
            m.ingester
                .memory_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            for (tenant, n) in streams {
                m.ingester
                    .active_streams
                    .get_or_create(&crate::metrics::TenantLabels {
                        tenant: tenant.to_string(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn record_flush(m: &Metrics, footer: &crate::storage::segment::Footer) {
    m.ingester.flushes.inc();
    for c in footer.streams.iter().flat_map(|s| &s.chunks) {
        m.ingester.chunks_flushed.inc();
        if c.len > 0 {
            m.ingester
                .chunk_compression_ratio
                .observe(c.meta.raw_bytes as f64 / c.len as f64);
        }
    }
}

impl Heads {
    /// Streams with unflushed entries per tenant, and bytes held in heads and chunks.
    fn usage(&self) -> (Vec<(&TenantId, usize)>, usize) {
        let mut bytes = 0;
        let mut per_tenant = Vec::new();
        for (tenant, streams) in &self.tenants {
            let mut n = 0;
            for s in streams.values().filter(|s| !s.days.is_empty()) {
                n += 1;
                for d in s.days.values() {
                    for c in d.closed.iter().chain(std::iter::once(&d.open)) {
                        bytes += c.sealed_bytes
                            + c.head_bytes
                            + c.pending.iter().map(|p| p.bytes).sum::<usize>();
                    }
                }
            }
            per_tenant.push((tenant, n));
        }
        (per_tenant, bytes)
    }

    fn is_seen(&self, tenant: &TenantId, labels: &LabelSet, e: &Entry) -> bool {
        self.tenants
            .get(tenant)
            .and_then(|t| t.get(labels))
            .and_then(|s| s.days.get(&Day::of_ns(e.timestamp_ns)))
            .is_some_and(|d| d.seen.contains(e.timestamp_ns, entry_hash(e)))
    }

    /// Splits a stream's entries into those to store and those refused; reserves the dedup
    /// hashes of the accepted ones.
    fn check(
        &mut self,
        tenant: &TenantId,
        labels: &LabelSet,
        entries: Vec<Entry>,
        entry_hashes: Vec<u64>,
        window_ns: i64,
    ) -> (Vec<Entry>, Vec<u64>, Vec<Rejected>) {
        let stream = stream_head(&mut self.tenants, tenant, labels);
        let mut keep = Vec::with_capacity(entries.len());
        let mut hashes = Vec::with_capacity(entries.len());
        let mut behind: Option<Rejected> = None;
        let mut dup: Option<Rejected> = None;
        for (e, h) in entries.into_iter().zip(entry_hashes) {
            let oldest_ok = stream.newest_ts.saturating_sub(window_ns);
            if stream.newest_ts != i64::MIN && e.timestamp_ns < oldest_ok {
                let r = behind.get_or_insert_with(|| Rejected {
                    labels: labels.clone(),
                    entries: 0,
                    bytes: 0,
                    reason: REASON_TOO_FAR_BEHIND,
                    message: format!(
                        "entry too far behind, entry timestamp is: {}, oldest acceptable timestamp is: {}",
                        rfc3339(e.timestamp_ns),
                        rfc3339(oldest_ok)
                    ),
                });
                r.entries += 1;
                r.bytes += e.line.len();
                continue;
            }
            let day = Day::of_ns(e.timestamp_ns);
            let seen = &mut stream.days.entry(day).or_insert_with(DayHead::new).seen;
            // Exact duplicates are dropped silently, as Loki does: a retrying client must
            // not see an error for data that is already stored.
            if !seen.insert(e.timestamp_ns, h) {
                let r = dup.get_or_insert_with(|| Rejected {
                    labels: labels.clone(),
                    entries: 0,
                    bytes: 0,
                    reason: REASON_DUPLICATE,
                    message: format!(
                        "entry with timestamp {} is an exact duplicate of a stored entry",
                        rfc3339(e.timestamp_ns)
                    ),
                });
                r.entries += 1;
                r.bytes += e.line.len();
                continue;
            }
            stream.newest_ts = stream.newest_ts.max(e.timestamp_ns);
            keep.push(e);
            hashes.push(h);
        }
        (keep, hashes, behind.into_iter().chain(dup).collect())
    }

    /// Releases dedup reservations (`reserved`: the hashes [`Heads::check`] gave, per
    /// stream) of entries whose WAL append failed.
    fn unreserve(
        &mut self,
        tenant: &TenantId,
        accepted: &[(LabelSet, Vec<Entry>)],
        reserved: &[Vec<u64>],
    ) {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        for ((labels, entries), hashes) in accepted.iter().zip(reserved) {
            let Some(s) = t.get_mut(labels) else { continue };
            for (e, h) in entries.iter().zip(hashes) {
                if let Some(d) = s.days.get_mut(&Day::of_ns(e.timestamp_ns)) {
                    d.seen.remove(e.timestamp_ns, *h);
                }
            }
        }
    }

    /// Moves every non-empty open chunk that `due` picks to the closed list, sealing its
    /// head block.
    fn close_chunks(&mut self, due: impl Fn(&Chunk) -> bool) {
        for streams in self.tenants.values_mut() {
            for (labels, s) in streams.iter_mut() {
                for day in s.days.values_mut() {
                    if day.open.is_empty() || !due(&day.open) {
                        continue;
                    }
                    let mut c = std::mem::replace(&mut day.open, Chunk::new(0, 0));
                    if let Err(err) = c.cut(&mut self.sealed_total) {
                        tracing::error!(%labels, error = %err, "cannot seal head block for flush")
                    }
                    day.closed.push(c);
                }
            }
        }
    }

    /// Moves the sealed blocks of every open chunk into closed chunks, leaving head
    /// blocks open, so the next flush writes everything sealed (memory pressure).
    fn close_sealed(&mut self) {
        let Heads {
            tenants,
            next_chunk_id,
            ..
        } = self;
        for day in tenants
            .values_mut()
            .flat_map(|t| t.values_mut())
            .flat_map(|s| s.days.values_mut())
        {
            if let Some(c) = day.open.split_sealed(*next_chunk_id + 1) {
                *next_chunk_id += 1;
                day.closed.push(c);
            }
        }
    }

    /// Closed chunks grouped into one segment per tenant and day.
    fn closed_batches(&self) -> Vec<FlushBatch> {
        let mut by_key: BTreeMap<(TenantId, Day), FlushBatch> = BTreeMap::new();
        for (tenant, streams) in &self.tenants {
            for (labels, s) in streams {
                for (day, d) in &s.days {
                    for c in d.closed.iter().filter(|c| !c.blocks.is_empty()) {
                        by_key
                            .entry((tenant.clone(), *day))
                            .or_insert_with(|| FlushBatch {
                                tenant: tenant.clone(),
                                day: *day,
                                chunks: Vec::new(),
                            })
                            .chunks
                            .push((
                                labels.clone(),
                                c.id,
                                FlushChunk {
                                    labels: labels.clone(),
                                    blocks: c.blocks.clone(),
                                },
                            ));
                    }
                }
            }
        }
        by_key.into_values().collect()
    }

    /// Drops flushed chunks; returns the streams left with nothing unflushed on that day.
    fn remove_flushed(
        &mut self,
        tenant: &TenantId,
        day: Day,
        ids: &[(LabelSet, u64)],
    ) -> Vec<LabelSet> {
        let mut emptied = Vec::new();
        let Some(streams) = self.tenants.get_mut(tenant) else {
            return emptied;
        };
        for (labels, id) in ids {
            let Some(s) = streams.get_mut(labels) else {
                continue;
            };
            let Some(d) = s.days.get_mut(&day) else {
                continue;
            };
            if let Some(pos) = d.closed.iter().position(|c| c.id == *id) {
                let c = d.closed.remove(pos);
                self.sealed_total = self.sealed_total.saturating_sub(c.sealed_bytes);
                d.seen.remove_all(&c.hashes);
            }
            if d.closed.is_empty() && d.open.is_empty() && d.seen.is_empty() {
                s.days.remove(&day);
                emptied.push(labels.clone());
            }
        }
        emptied
    }

    /// The oldest WAL segment an unflushed entry is in; `None` when heads are empty.
    fn oldest_wal_segment(&self) -> Option<SegmentNo> {
        self.tenants
            .values()
            .flat_map(|t| t.values())
            .flat_map(|s| s.days.values())
            .flat_map(|d| d.closed.iter().chain(std::iter::once(&d.open)))
            .filter_map(Chunk::oldest_wal)
            .min()
    }
}

#[cfg(test)]
mod tests;
