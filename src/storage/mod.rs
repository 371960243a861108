//! Storage: immutable segment objects written and read through `object_store`, the catalog
//! of segments per tenant, and the byte-bounded cache of decoded blocks.
//!
//! Owns `storage_config` (local filesystem by default, S3-compatible by configuration),
//! object keys `<tenant>/<YYYY-MM-DD>/<segment id>.seg`, loading every footer into the
//! [`Index`] on start, and ranged reads: a query fetches a footer once (at load) and then
//! only the byte ranges of the blocks it needs. It does not own when segments are written
//! (the ingester's flush) or deleted (retention), nor merging segments with the
//! ingester's heads (the querier).
//!
//! A block read is one task on the decode pool: fetch its byte range, verify and
//! decompress it, drop it when it lacks a substring the query requires, and build entries
//! for the lines that have it. On the local filesystem the fetch is a positioned read of a
//! cached file handle; other stores are read through `object_store`. The cache holds
//! whole blocks, and the lines of a block kept by one substring filter under that
//! filter's key (an empty list for a block the filter skips), so a dashboard repeating a
//! search pays for decompression once. A second, smaller cache holds the count columns
//! of blocks that counts read ([`chunk::count::CountColumns`]: timestamps, line lengths
//! and metadata-set ids), so a repeated count of blocks straddling its window edges is a
//! few binary searches instead of a decompression.

pub mod segment;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use lode_push::Entry;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use parking_lot::{Mutex, RwLock};
use query_lang::eval::{BlockCount, Needle, SampleCache};
use serde::{Deserialize, Serialize};

use crate::chunk;
use crate::chunk::count::CountColumns;
use crate::clock::{Clock, Day};
use crate::index::Index;
use crate::tenant::TenantId;

use segment::{BlockInfo, CopiedChunk, FlushChunk, Footer, SegmentId};

/// Why a segment could not be written, listed or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object store {action} {key}: {source}")]
    ObjectStore {
        action: &'static str,
        key: String,
        source: object_store::Error,
    },
    #[error("segment {key} is corrupt: {what}")]
    CorruptSegment { key: String, what: String },
    #[error("segment {key} no longer exists (compaction merged it or retention deleted it while this read ran): run the query again")]
    Gone { key: String },
    #[error(transparent)]
    Chunk(#[from] chunk::Error),
    #[error("segment footer: {0}")]
    Wire(#[from] chunk::wire::WireError),
    #[error("{0}")]
    Config(String),
    #[error("decode task failed: {0}")]
    Task(String),
}

/// `storage_config.filesystem`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemConfig {
    pub directory: PathBuf,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        FilesystemConfig {
            directory: PathBuf::from("data/chunks"),
        }
    }
}

/// `storage_config.aws`: any S3-compatible store (AWS, MinIO, Ceph, moto).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// e.g. `http://minio:9000`; empty means AWS itself.
    pub endpoint: String,
    /// The bucket (Loki accepts a comma list; Lode uses exactly one).
    pub bucketnames: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    /// Path-style URLs (`endpoint/bucket/key`), which MinIO and moto need.
    pub s3forcepathstyle: bool,
    /// Allow plain http to the endpoint.
    pub insecure: bool,
}

/// `storage_config`: where segments live and how much decoded data to cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub filesystem: FilesystemConfig,
    /// When set, segments go to this bucket instead of `filesystem.directory`.
    pub aws: Option<AwsConfig>,
    /// Bound of the decoded-block LRU, in MiB.
    pub block_cache_max_size_mb: usize,
    /// Bound of the LRU of what metric queries' pipelines made of whole blocks, in MiB
    /// (query-lang's `SampleCache`); 0 turns it off.
    pub sample_cache_max_size_mb: usize,
    /// Bound of the LRU of blocks' count columns (what counts without a pipeline read of
    /// blocks straddling their window edges), in MiB; 0 turns it off.
    pub count_cache_max_size_mb: usize,
}

/// Default of `storage_config.sample_cache_max_size_mb`.
pub const DEFAULT_SAMPLE_CACHE_MB: usize = 64;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            filesystem: FilesystemConfig::default(),
            aws: None,
            block_cache_max_size_mb: 256,
            sample_cache_max_size_mb: DEFAULT_SAMPLE_CACHE_MB,
            count_cache_max_size_mb: 64,
        }
    }
}

impl StorageConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(aws) = &self.aws {
            if aws.bucketnames.is_empty() {
                return Err(Error::Config(
                    "storage_config.aws.bucketnames is empty: name the bucket segments go to"
                        .into(),
                ));
            }
            if aws.bucketnames.contains(',') {
                return Err(Error::Config(format!(
                    "storage_config.aws.bucketnames {:?} lists several buckets: Lode writes to exactly one",
                    aws.bucketnames
                )));
            }
        } else if self.filesystem.directory.as_os_str().is_empty() {
            return Err(Error::Config(
                "storage_config.filesystem.directory is empty: set a directory for segments".into(),
            ));
        }
        Ok(())
    }

    /// The local filesystem store, when no S3-compatible store is configured.
    pub fn local_filesystem(
        &self,
    ) -> Result<Option<Arc<object_store::local::LocalFileSystem>>, Error> {
        if self.aws.is_some() {
            return Ok(None);
        }
        self.validate()?;
        let dir = &self.filesystem.directory;
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Config(format!(
                "cannot create storage_config.filesystem.directory {}: {e}",
                dir.display()
            ))
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| Error::ObjectStore {
                action: "configure",
                key: String::new(),
                source: e,
            })?
            .with_automatic_cleanup(true);
        Ok(Some(Arc::new(fs)))
    }

    /// Builds the configured object store.
    pub fn object_store(&self) -> Result<Arc<dyn ObjectStore>, Error> {
        self.validate()?;
        let err = |e: object_store::Error| Error::ObjectStore {
            action: "configure",
            key: String::new(),
            source: e,
        };
        match &self.aws {
            Some(aws) => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&aws.bucketnames)
                    .with_virtual_hosted_style_request(!aws.s3forcepathstyle)
                    .with_allow_http(aws.insecure);
                if !aws.endpoint.is_empty() {
                    b = b.with_endpoint(&aws.endpoint);
                }
                if !aws.region.is_empty() {
                    b = b.with_region(&aws.region);
                }
                if !aws.access_key_id.is_empty() {
                    b = b
                        .with_access_key_id(&aws.access_key_id)
                        .with_secret_access_key(&aws.secret_access_key);
                }
                Ok(Arc::new(b.build().map_err(err)?))
            }
            None => match self.local_filesystem()? {
                Some(fs) => Ok(fs),
                None => Err(Error::Config("no store configured".to_string())),
            },
        }
    }
}

/// A segment known to the catalog: where it is and what its footer says.
#[derive(Debug)]
pub struct SegmentMeta {
    pub id: SegmentId,
    pub path: ObjectPath,
    pub size: u64,
    pub footer: Footer,
}

/// The object key of a segment.
pub fn segment_path(tenant: &TenantId, day: Day, id: SegmentId) -> ObjectPath {
    ObjectPath::from(format!("{tenant}/{day}/{id}.seg"))
}

fn parse_key(path: &ObjectPath) -> Option<(TenantId, Day, SegmentId)> {
    let mut parts = path.parts();
    let tenant = TenantId::new(parts.next()?.as_ref()).ok()?;
    let day = Day::parse(parts.next()?.as_ref())?;
    let file = parts.next()?;
    let id = SegmentId::parse(file.as_ref().strip_suffix(".seg")?)?;
    parts.next().is_none().then_some((tenant, day, id))
}

/// A cached block's key: segment, block offset, and the [`BlockFilter::key`] its lines
/// were kept by (0: all of them).
type CacheKey = (SegmentId, u64, u64);

/// Decoded blocks' entries (whole, or those kept by a filter).
type BlockCache = ByteLru<CacheKey, Arc<Vec<Entry>>>;

/// Blocks' count columns, by segment and block offset.
type CountCache = ByteLru<(SegmentId, u64), Arc<CountColumns>>;

/// Values of known size, least recently used first out once over the byte budget.
struct ByteLru<K: std::hash::Hash + Eq, V: Clone> {
    lru: lru::LruCache<K, (V, usize)>,
    bytes: usize,
    budget: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> ByteLru<K, V> {
    fn new(budget: usize) -> Self {
        ByteLru {
            lru: lru::LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    fn get(&mut self, key: &K) -> Option<V> {
        self.lru.get(key).map(|(v, _)| v.clone())
    }

    /// Keeps `value` (of `size` bytes) unless it alone exceeds the budget.
    fn put(&mut self, key: K, value: V, size: usize) {
        if size > self.budget {
            return;
        }
        if let Some((_, old)) = self.lru.put(key, (value, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > self.budget {
            match self.lru.pop_lru() {
                Some((_, (_, s))) => self.bytes -= s,
                None => break,
            }
        }
    }

    /// Drops every value whose key `stale` picks.
    fn remove_where(&mut self, stale: impl Fn(&K) -> bool)
    where
        K: Clone,
    {
        let keys: Vec<K> = self
            .lru
            .iter()
            .filter(|(k, _)| stale(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some((_, size)) = self.lru.pop(&k) {
                self.bytes -= size;
            }
        }
    }
}

/// Byte budgets of the storage's caches.
struct CacheBudgets {
    blocks: usize,
    counts: usize,
    samples: usize,
}

/// The bounded CPU pool blocks are verified, decompressed and parsed on: one thread per
/// core for the life of the process, so block reads never oversubscribe the cores nor
/// start threads, and each thread's decompression buffers stay warm. Tasks never wait on
/// each other, so the pool cannot deadlock.
struct DecodePool(rayon_core::ThreadPool);

impl DecodePool {
    fn new() -> Result<DecodePool, Error> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon_core::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("lode-decode-{i}"))
            // A panicking task drops its sender: the read fails, the process lives on.
            .panic_handler(|_| {})
            .build()
            .map(DecodePool)
            .map_err(|e| Error::Task(format!("cannot start the decode pool: {e}")))
    }

    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0.spawn(move || {
            let _ = tx.send(f());
        });
        rx.await
            .map_err(|_| Error::Task("a block decode panicked".to_string()))
    }
}

/// Open segment files of the local filesystem store, for positioned block reads.
const OPEN_FILES: usize = 256;

/// Reads byte ranges of segments: positioned reads of cached file handles when the store
/// is the local filesystem, else requests to the object store.
struct SegmentReader {
    store: Arc<dyn ObjectStore>,
    local: Option<Arc<object_store::local::LocalFileSystem>>,
    files: Mutex<lru::LruCache<SegmentId, Arc<std::fs::File>>>,
}

impl SegmentReader {
    /// `range` of a segment on the local filesystem into `buf` (grown, never shrunk, so
    /// a reused buffer is not zeroed again).
    fn read_local(
        &self,
        local: &object_store::local::LocalFileSystem,
        meta: &SegmentMeta,
        range: std::ops::Range<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<usize, Error> {
        let io = |e: std::io::Error| Error::ObjectStore {
            action: "read",
            key: meta.path.to_string(),
            source: object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            },
        };
        let file = self.files.lock().get(&meta.id).cloned();
        let file = match file {
            Some(f) => f,
            None => {
                let path =
                    local
                        .path_to_filesystem(&meta.path)
                        .map_err(|e| Error::ObjectStore {
                            action: "read",
                            key: meta.path.to_string(),
                            source: e,
                        })?;
                let f = match std::fs::File::open(path) {
                    Ok(f) => Arc::new(f),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(Error::Gone {
                            key: meta.path.to_string(),
                        })
                    }
                    Err(e) => return Err(io(e)),
                };
                self.files.lock().put(meta.id, f.clone());
                f
            }
        };
        let len = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|_| Error::Task("block range too large".to_string()))?;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let dst = buf.get_mut(..len).unwrap_or_default();
        std::os::unix::fs::FileExt::read_exact_at(&*file, dst, range.start).map_err(io)?;
        Ok(len)
    }

    async fn read(
        &self,
        meta: &SegmentMeta,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, Error> {
        self.store
            .get_range(&meta.path, range)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::Gone {
                    key: meta.path.to_string(),
                },
                e => Error::ObjectStore {
                    action: "read",
                    key: meta.path.to_string(),
                    source: e,
                },
            })
    }

    /// Closes a deleted segment's file, so its space is freed.
    fn forget(&self, id: SegmentId) {
        self.files.lock().pop(&id);
    }
}

thread_local! {
    /// This decode thread's buffer for a block's compressed bytes.
    static RAW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` over one block's bytes read from a local segment file into this thread's
/// reusable buffer.
fn on_local_block<R>(
    reader: &SegmentReader,
    local: &object_store::local::LocalFileSystem,
    meta: &SegmentMeta,
    range: std::ops::Range<u64>,
    f: impl FnOnce(&[u8]) -> Result<R, Error>,
) -> Result<R, Error> {
    RAW.with(|raw| {
        let mut raw = raw.borrow_mut();
        let len = reader.read_local(local, meta, range, &mut raw)?;
        let out = f(raw.get(..len).unwrap_or_default());
        // A rare huge block must not pin its buffer in every thread for good.
        if raw.capacity() > 4 << 20 {
            *raw = Vec::new();
        }
        out
    })
}

fn decoded_size(entries: &[Entry]) -> usize {
    entries
        .iter()
        .map(|e| {
            64 + e.line.len()
                + e.structured_metadata
                    .iter()
                    .map(|(n, v)| 48 + n.len() + v.len())
                    .sum::<usize>()
        })
        .sum()
}

/// Substrings a block must contain to be worth parsing: every group must have at least
/// one of its needles somewhere in the decompressed payload (a query's `|= "a" or "b"`
/// filters, in order, and the required literals of its `|~` regexes). Matches in
/// timestamps or metadata only cost a parse; the query engine applies the real filters
/// afterwards, so the test may err only towards `true`.
#[derive(Clone, Debug, Default)]
pub struct BlockFilter {
    groups: Arc<Vec<Vec<NeedleFinder>>>,
    /// Names the needles for the block cache; 0 for the empty filter.
    key: u64,
}

#[derive(Clone, Debug)]
enum NeedleFinder {
    Exact(Box<memchr::memmem::Finder<'static>>),
    /// `(?i)` literals: ASCII case folded, as the line filter matches them.
    Folded(aho_corasick::AhoCorasick),
}

impl NeedleFinder {
    fn new(n: &Needle) -> Option<Self> {
        if n.ignore_ascii_case {
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build([n.text.as_bytes()])
                .ok()
                .map(NeedleFinder::Folded)
        } else {
            Some(NeedleFinder::Exact(Box::new(
                memchr::memmem::Finder::new(n.text.as_bytes()).into_owned(),
            )))
        }
    }

    fn found_in(&self, payload: &[u8]) -> bool {
        match self {
            NeedleFinder::Exact(f) => f.find(payload).is_some(),
            NeedleFinder::Folded(ac) => ac.is_match(payload),
        }
    }
}

impl BlockFilter {
    /// A filter requiring, for each group, one of its needles. Groups holding an empty
    /// needle (or one that cannot be built) are dropped: they match everything.
    pub fn new(groups: Vec<Vec<Needle>>) -> Self {
        use std::hash::{Hash, Hasher};
        let groups: Vec<_> = groups
            .into_iter()
            .filter(|g| !g.is_empty() && g.iter().all(|n| !n.text.is_empty()))
            .filter_map(|g| {
                let finders = g
                    .iter()
                    .map(NeedleFinder::new)
                    .collect::<Option<Vec<_>>>()?;
                Some((g, finders))
            })
            .collect();
        let key = if groups.is_empty() {
            0
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for (g, _) in &groups {
                g.len().hash(&mut h);
                for n in g {
                    (&n.text, n.ignore_ascii_case).hash(&mut h);
                }
            }
            h.finish().max(1)
        };
        BlockFilter {
            groups: Arc::new(groups.into_iter().map(|(_, f)| f).collect()),
            key,
        }
    }

    /// True when the filter passes every block.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Whether `payload` may hold a matching line.
    pub fn may_match(&self, payload: &[u8]) -> bool {
        self.groups
            .iter()
            .all(|g| g.iter().any(|f| f.found_in(payload)))
    }
}

/// Segments of every tenant, the index over them, and the block cache.
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    reader: Arc<SegmentReader>,
    pool: DecodePool,
    index: Arc<Index>,
    clock: Arc<dyn Clock>,
    segments: RwLock<HashMap<TenantId, BTreeMap<SegmentId, Arc<SegmentMeta>>>>,
    cache: Mutex<BlockCache>,
    /// Metric queries' samples of whole blocks, keyed by segment id and block offset
    /// (segments never change under one id, so entries never go stale; those of deleted
    /// segments age out).
    samples: SampleCache,
    counts: Mutex<CountCache>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("store", &self.store.to_string())
            .finish()
    }
}

impl Storage {
    /// Opens the configured store and loads every segment footer into the index.
    pub async fn open(
        config: &StorageConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Storage>, Error> {
        let budgets = CacheBudgets {
            blocks: config.block_cache_max_size_mb << 20,
            counts: config.count_cache_max_size_mb << 20,
            samples: config.sample_cache_max_size_mb << 20,
        };
        match config.local_filesystem()? {
            Some(local) => Storage::build(local.clone(), Some(local), budgets, clock).await,
            None => Storage::build(config.object_store()?, None, budgets, clock).await,
        }
    }

    /// Like [`Storage::open`] over an object store built elsewhere, with a decoded-block
    /// cache of `cache_bytes` (and the default count and sample caches).
    pub async fn with_object_store(
        store: Arc<dyn ObjectStore>,
        cache_bytes: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Storage>, Error> {
        let budgets = CacheBudgets {
            blocks: cache_bytes,
            counts: StorageConfig::default().count_cache_max_size_mb << 20,
            samples: StorageConfig::default().sample_cache_max_size_mb << 20,
        };
        Storage::build(store, None, budgets, clock).await
    }

    /// Metric queries' samples of whole stored blocks.
    pub fn sample_cache(&self) -> &SampleCache {
        &self.samples
    }

    async fn build(
        store: Arc<dyn ObjectStore>,
        local: Option<Arc<object_store::local::LocalFileSystem>>,
        budgets: CacheBudgets,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Storage>, Error> {
        let storage = Arc::new(Storage {
            reader: Arc::new(SegmentReader {
                store: store.clone(),
                local,
                files: Mutex::new(lru::LruCache::new(non_zero(OPEN_FILES))),
            }),
            pool: DecodePool::new()?,
            store,
            index: Arc::new(Index::new()),
            clock,
            segments: RwLock::new(HashMap::new()),
            cache: Mutex::new(ByteLru::new(budgets.blocks)),
            counts: Mutex::new(ByteLru::new(budgets.counts)),
            samples: SampleCache::new(budgets.samples),
        });
        storage.load().await?;
        Ok(storage)
    }

    async fn load(&self) -> Result<(), Error> {
        let listed: Vec<_> =
            self.store
                .list(None)
                .try_collect()
                .await
                .map_err(|e| Error::ObjectStore {
                    action: "list",
                    key: String::new(),
                    source: e,
                })?;
        let keyed: Vec<_> = listed
            .into_iter()
            .filter_map(|o| parse_key(&o.location).map(|k| (k, o)))
            .collect();
        let metas: Vec<SegmentMeta> = futures::stream::iter(keyed)
            .map(|((_, _, id), o)| async move {
                let footer = self.read_footer(&o.location, o.size).await?;
                Ok::<_, Error>(SegmentMeta {
                    id,
                    path: o.location,
                    size: o.size,
                    footer,
                })
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let replaced: std::collections::HashSet<SegmentId> = metas
            .iter()
            .flat_map(|m| m.footer.replaces.iter().copied())
            .collect();
        for meta in metas {
            if replaced.contains(&meta.id) {
                // A retention rewrite or a compaction wrote its new segment but died before
                // deleting what it replaced: the new one holds every entry of the old.
                self.delete_object(&meta.path).await?;
                continue;
            }
            self.register(Arc::new(meta));
        }
        Ok(())
    }

    async fn read_footer(&self, path: &ObjectPath, size: u64) -> Result<Footer, Error> {
        let key = path.to_string();
        let get = |range: std::ops::Range<u64>| {
            let key = key.clone();
            async move {
                self.store
                    .get_range(path, range)
                    .await
                    .map_err(|e| Error::ObjectStore {
                        action: "read",
                        key,
                        source: e,
                    })
            }
        };
        // One request usually covers trailer and footer together.
        let tail_len = size.min(64 << 10);
        let tail = get(size - tail_len..size).await?;
        let range = segment::footer_range(&tail, size, &key)?;
        let trailer = tail.slice(tail.len() - segment::TRAILER_LEN..);
        let footer = if range.start >= size - tail_len {
            let from = (range.start - (size - tail_len)) as usize;
            tail.slice(from..tail.len() - segment::TRAILER_LEN)
        } else {
            get(range).await?
        };
        segment::decode_footer(&footer, &trailer, size, &key)
    }

    fn register(&self, meta: Arc<SegmentMeta>) {
        self.index.add_segment(&meta);
        self.segments
            .write()
            .entry(meta.footer.tenant.clone())
            .or_default()
            .insert(meta.id, meta);
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// A tenant's segments, oldest first.
    pub fn segments(&self, tenant: &TenantId) -> Vec<Arc<SegmentMeta>> {
        self.segments
            .read()
            .get(tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Tenants with at least one segment.
    pub fn tenants(&self) -> Vec<TenantId> {
        self.segments.read().keys().cloned().collect()
    }

    /// Encodes chunks of one tenant and day into a new segment, writes it, and makes it
    /// visible to reads. `replaces` names segments this one supersedes (retention).
    pub async fn write_segment(
        &self,
        tenant: &TenantId,
        day: Day,
        chunks: Vec<FlushChunk>,
        copied: Vec<CopiedChunk>,
        replaces: Vec<SegmentId>,
    ) -> Result<Arc<SegmentMeta>, Error> {
        let id = SegmentId::new(self.clock.now_ns());
        let path = segment_path(tenant, day, id);
        let t = tenant.clone();
        let (bytes, footer) = tokio::task::spawn_blocking(move || {
            segment::encode(&t, day, &chunks, &copied, &replaces)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?;
        let meta = self.put_segment(id, path, bytes, footer).await?;
        let replaces = meta.footer.replaces.clone();
        self.replace_segments(meta.clone(), &replaces);
        Ok(meta)
    }

    /// Writes an encoded segment object under `path` without making it visible to
    /// reads (see [`Storage::replace_segments`]).
    pub async fn put_segment(
        &self,
        id: SegmentId,
        path: ObjectPath,
        bytes: Vec<u8>,
        footer: Footer,
    ) -> Result<Arc<SegmentMeta>, Error> {
        let size = bytes.len() as u64;
        self.store
            .put(&path, bytes.into())
            .await
            .map_err(|e| Error::ObjectStore {
                action: "write",
                key: path.to_string(),
                source: e,
            })?;
        Ok(Arc::new(SegmentMeta {
            id,
            path,
            size,
            footer,
        }))
    }

    /// Makes `new` visible and `old` (segments of the same tenant and day) invisible in
    /// one step of the index, so no query sees both or neither; then closes the old
    /// segments' files and drops their cached blocks. The old objects are not deleted:
    /// queries may still hold them (see [`Storage::delete_object`]).
    pub fn replace_segments(&self, new: Arc<SegmentMeta>, old: &[SegmentId]) {
        let tenant = new.footer.tenant.clone();
        self.index.replace_segments(&new, old);
        {
            let mut segments = self.segments.write();
            let m = segments.entry(tenant).or_default();
            for id in old {
                m.remove(id);
            }
            m.insert(new.id, new);
        }
        for id in old {
            self.reader.forget(*id);
            self.evict(*id);
        }
    }

    /// Drops a segment from the catalog and index (reads stop seeing it at once), closes
    /// its file and evicts its cached blocks.
    pub fn forget(&self, tenant: &TenantId, day: Day, id: SegmentId) {
        self.index.remove_segment(tenant, day, id);
        self.reader.forget(id);
        if let Some(m) = self.segments.write().get_mut(tenant) {
            m.remove(&id);
        }
        self.evict(id);
    }

    /// Removes a segment's blocks from the decoded-block and count caches.
    fn evict(&self, id: SegmentId) {
        self.cache.lock().remove_where(|k| k.0 == id);
        self.counts.lock().remove_where(|k| k.0 == id);
    }

    /// Deletes a segment object (after [`Storage::forget`]).
    pub async fn delete_object(&self, path: &ObjectPath) -> Result<(), Error> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::ObjectStore {
                action: "delete",
                key: path.to_string(),
                source: e,
            }),
        }
    }

    /// Fetches raw bytes of a segment (chunk copies during rewrites).
    pub async fn read_range(
        &self,
        meta: &SegmentMeta,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, Error> {
        self.reader.read(meta, range).await
    }

    /// One block's entries in time order: from the cache, or fetched (its byte range only)
    /// and decoded on the blocking pool.
    pub async fn read_block(
        &self,
        meta: &Arc<SegmentMeta>,
        block: &BlockInfo,
    ) -> Result<Arc<Vec<Entry>>, Error> {
        let all = BlockFilter::default();
        match self.read_block_if(meta, block, &all).await? {
            Some(entries) => Ok(entries),
            None => Err(Error::Task(
                "a block with no filter was skipped".to_string(),
            )),
        }
    }

    /// Like [`Self::read_block`], but only entries whose line may pass `filter` (holds
    /// a needle of each group): a block holding none of a required substring is skipped
    /// (`None`) after one memmem pass over its decompressed lines, and entries are built
    /// only for the lines that pass. A whole cached block is used as it is.
    pub async fn read_block_if(
        &self,
        meta: &Arc<SegmentMeta>,
        block: &BlockInfo,
        filter: &BlockFilter,
    ) -> Result<Option<Arc<Vec<Entry>>>, Error> {
        self.read_block_with(meta, block, filter, true).await
    }

    /// Like [`Self::read_block_if`], but a block not in the cache is not put there once
    /// decoded: for a reader that keeps what it makes of the block elsewhere (a metric
    /// query's samples). Filling the cache is most of the cost of a first read: every
    /// decoded entry is freshly allocated memory the kernel must fault in and zero,
    /// while entries dropped after use are memory the next block reuses.
    pub async fn read_block_through(
        &self,
        meta: &Arc<SegmentMeta>,
        block: &BlockInfo,
        filter: &BlockFilter,
    ) -> Result<Option<Arc<Vec<Entry>>>, Error> {
        self.read_block_with(meta, block, filter, false).await
    }

    /// [`Self::read_block_through`] done on the calling thread, when the segment is a
    /// local file (`None` otherwise: read it through the decode pool). For a caller
    /// that drops the entries itself soon after: entries a thread allocates and frees
    /// itself take the allocator's fast paths, and the next block reuses their memory
    /// while it is still mapped, where entries decoded on the pool and freed by the
    /// caller are each a cross-thread free and leave the pool's threads taking fresh
    /// pages meanwhile.
    pub fn read_block_here(
        &self,
        meta: &Arc<SegmentMeta>,
        block: &BlockInfo,
        filter: &BlockFilter,
    ) -> Option<Result<Option<Arc<Vec<Entry>>>, Error>> {
        let local = self.reader.local.clone()?;
        if let Some(hit) = self.cached_block(meta, block, filter) {
            return Some(Ok(hit));
        }
        let range = block.offset..block.offset + u64::from(block.len);
        let entries = on_local_block(&self.reader, &local, meta, range, |bytes| {
            decode_kept(bytes, meta, block, filter)
        });
        Some(entries.map(|e| (!e.is_empty() || filter.key == 0).then(|| Arc::new(e))))
    }

    /// A block's entries from the cache, whole or as kept by `filter` (`Some(None)`: the
    /// filter skipped the block).
    fn cached_block(
        &self,
        meta: &Arc<SegmentMeta>,
        block: &BlockInfo,
        filter: &BlockFilter,
    ) -> Option<Option<Arc<Vec<Entry>>>> {
        let mut cache = self.cache.lock();
        if let Some(entries) = cache.get(&(meta.id, block.offset, 0)) {
            return Some(Some(entries));
        }
        if filter.key != 0 {
            if let Some(entries) = cache.get(&(meta.id, block.offset, filter.key)) {
                return Some((!entries.is_empty()).then_some(entries));
            }
        }
        None
    }

    /// [`Self::read_block_if`] when `keep`, else [`Self::read_block_through`].
    pub async fn read_block_with(
        &self,
        meta: &Arc<SegmentMeta>,
        block: &BlockInfo,
        filter: &BlockFilter,
        keep: bool,
    ) -> Result<Option<Arc<Vec<Entry>>>, Error> {
        let kept = (meta.id, block.offset, filter.key);
        if let Some(hit) = self.cached_block(meta, block, filter) {
            return Ok(hit);
        }
        let (seg, info, f) = (meta.clone(), *block, filter.clone());
        let entries = self
            .on_block(meta, block, move |bytes| {
                decode_kept(bytes, &seg, &info, &f)
            })
            .await?;
        let entries = Arc::new(entries);
        if keep {
            // The key and list cost something even when no entry is kept.
            let size = 64 + decoded_size(&entries);
            self.cache.lock().put(kept, entries.clone(), size);
        }
        Ok((!entries.is_empty() || filter.key == 0).then_some(entries))
    }

    /// Lines and line bytes of a block per span between consecutive `edges` and per
    /// structured-metadata set (see `query_lang::eval::SelectRequest::count_edges`),
    /// from the block's count columns: cached, or read from its columns frame alone (its
    /// lines are never decompressed; a v1 block, which has no columns frame, is decoded
    /// whole from the same read) and then cached.
    pub async fn count_block(
        &self,
        meta: &Arc<SegmentMeta>,
        block: &BlockInfo,
        edges: Arc<[i64]>,
    ) -> Result<Vec<BlockCount>, Error> {
        let key = (meta.id, block.offset);
        let cached = self.counts.lock().get(&key);
        if let Some(columns) = cached {
            return Ok(count_spans(&columns, &edges));
        }
        let (seg, info) = (meta.clone(), *block);
        let (columns, counts) = self
            .on_block(meta, block, move |bytes| {
                let (found, columns) = chunk::count::read_count_columns(bytes)?;
                if found != info.meta {
                    return Err(disagrees(&seg, &info, &found));
                }
                let counts = count_spans(&columns, &edges);
                Ok((columns, counts))
            })
            .await?;
        let size = 64 + columns.heap_bytes();
        self.counts.lock().put(key, Arc::new(columns), size);
        Ok(counts)
    }

    /// One block's entries in time order, decoded on the decode pool without going
    /// through the block cache (compaction reads every block once; caching them would
    /// only evict what queries use).
    pub async fn read_block_uncached(
        &self,
        meta: &Arc<SegmentMeta>,
        block: &BlockInfo,
    ) -> Result<Vec<Entry>, Error> {
        let (seg, info) = (meta.clone(), *block);
        let all = BlockFilter::default();
        self.on_block(meta, block, move |bytes| {
            decode_kept(bytes, &seg, &info, &all)
        })
        .await
    }

    /// Runs `f` on the decode pool over one block's bytes: read there into the thread's
    /// reusable buffer from a local file, or fetched from the object store first.
    async fn on_block<R: Send + 'static>(
        &self,
        meta: &Arc<SegmentMeta>,
        block: &BlockInfo,
        f: impl FnOnce(&[u8]) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let range = block.offset..block.offset + u64::from(block.len);
        let Some(local) = self.reader.local.clone() else {
            let bytes = self.reader.read(meta, range).await?;
            return self.pool.run(move || f(&bytes)).await?;
        };
        let (reader, seg) = (self.reader.clone(), meta.clone());
        self.pool
            .run(move || on_local_block(&reader, &local, &seg, range, f))
            .await?
    }

    /// Whether segments are local files (read with positioned reads, not requests).
    pub fn is_local(&self) -> bool {
        self.reader.local.is_some()
    }

    /// Bytes currently held by the decoded-block cache.
    pub fn cached_bytes(&self) -> usize {
        self.cache.lock().bytes
    }

    /// Bytes currently held by the count-columns cache.
    pub fn cached_count_bytes(&self) -> usize {
        self.counts.lock().bytes
    }
}

/// A block's entries whose line may pass `filter` (all of them for the empty filter),
/// checked against the footer's record of the block.
fn decode_kept(
    bytes: &[u8],
    seg: &SegmentMeta,
    block: &BlockInfo,
    filter: &BlockFilter,
) -> Result<Vec<Entry>, Error> {
    // The header and the line text first: a block the filter rules out ends there,
    // before its columns are decompressed.
    let early = |meta: &chunk::BlockMeta, text: &[u8]| {
        if *meta != block.meta {
            return Some(Err(disagrees(seg, block, meta)));
        }
        (!filter.is_empty() && !filter.may_match(text)).then(|| Ok(Vec::new()))
    };
    chunk::with_decompressed_early(bytes, early, |meta, raw| {
        if filter.is_empty() {
            return Ok(chunk::parse_payload(meta, raw)?);
        }
        let mut kept =
            chunk::parse_payload_if(meta, raw, |line| filter.may_match(line.as_bytes()))?;
        kept.shrink_to_fit();
        Ok(kept)
    })?
}

/// The error for a block whose header is not what the segment's footer recorded.
fn disagrees(seg: &SegmentMeta, block: &BlockInfo, found: &chunk::BlockMeta) -> Error {
    Error::CorruptSegment {
        key: seg.path.to_string(),
        what: format!(
            "block at {} disagrees with the footer: {found:?} vs {:?}",
            block.offset, block.meta
        ),
    }
}

/// A block's lines and line bytes per span `(edges[i-1], edges[i]]` and metadata set,
/// each stamped with its span's upper edge; lines outside `(first edge, last edge]` count
/// nowhere.
fn count_spans(columns: &CountColumns, edges: &[i64]) -> Vec<BlockCount> {
    let mut out = Vec::new();
    let sets = columns.sets();
    columns.count_spans(edges, |upper, set, lines, bytes| {
        out.push(BlockCount {
            timestamp_ns: upper,
            metadata: sets.get(set).cloned().unwrap_or_default(),
            lines,
            bytes,
        });
    });
    out
}

/// Counts a block's entries per span like [`count_spans`], from its bytes.
#[cfg(test)]
fn count_columns(bytes: &[u8], edges: &[i64]) -> Result<Vec<BlockCount>, chunk::Error> {
    let (_, columns) = chunk::count::read_count_columns(bytes)?;
    Ok(count_spans(&columns, edges))
}

/// Non-zero helper for configs that size things in items rather than bytes.
pub fn non_zero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::SealedBlock;
    use crate::clock::Day;
    use lode_push::LabelSet;
    use segment::FlushChunk;

    /// A store over an in-memory object store with a 1 MiB block cache.
    pub(super) async fn memory_store() -> Arc<Storage> {
        Storage::with_object_store(
            Arc::new(object_store::memory::InMemory::new()),
            1 << 20,
            Arc::new(crate::clock::SystemClock),
        )
        .await
        .unwrap()
    }

    fn block(lines: &[&str]) -> SealedBlock {
        let entries = lines
            .iter()
            .enumerate()
            .map(|(i, l)| Entry {
                timestamp_ns: i as i64 + 1,
                line: (*l).to_string(),
                structured_metadata: Default::default(),
            })
            .collect();
        SealedBlock::seal(entries, 1).unwrap()
    }

    /// A segment of one stream with two blocks, the second alone holding "error".
    async fn two_block_segment(storage: &Storage) -> (Arc<SegmentMeta>, Vec<BlockInfo>) {
        let tenant = TenantId::new("t").unwrap();
        let chunks = vec![FlushChunk {
            labels: LabelSet::parse(r#"{app="a"}"#).unwrap(),
            blocks: vec![
                block(&["GET /ok 200", "GET /ok 200"]),
                block(&["GET /x 500 error", "GET /ok 200"]),
            ],
        }];
        let seg = storage
            .write_segment(&tenant, Day(20000), chunks, vec![], vec![])
            .await
            .unwrap();
        let blocks = seg.footer.streams[0].chunks[0].blocks.clone();
        (seg, blocks)
    }

    #[tokio::test]
    async fn blocks_read_on_the_calling_thread_are_those_the_pool_reads_and_stay_uncached() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(
            &crate::testutil::store_config(dir.path(), 0),
            Arc::new(crate::clock::SystemClock),
        )
        .await
        .unwrap();
        let (seg, blocks) = two_block_segment(&storage).await;
        let error = BlockFilter::new(vec![vec![Needle {
            text: "error".to_string(),
            ignore_ascii_case: false,
        }]]);
        let all = BlockFilter::default();
        for b in &blocks {
            for f in [&all, &error] {
                let here = storage.read_block_here(&seg, b, f).unwrap().unwrap();
                let pool = storage.read_block_through(&seg, b, f).await.unwrap();
                assert_eq!(here.as_deref(), pool.as_deref());
            }
        }
        assert_eq!(storage.cached_bytes(), 0, "a read-through block was cached");
        // A cached block is taken from the cache, not read again.
        let cached = storage.read_block(&seg, &blocks[1]).await.unwrap();
        let here = storage.read_block_here(&seg, &blocks[1], &all);
        assert!(Arc::ptr_eq(&cached, &here.unwrap().unwrap().unwrap()));
        // Segments that are not local files are left to the decode pool.
        let remote = tests::memory_store().await;
        assert!(remote.read_block_here(&seg, &blocks[0], &all).is_none());
    }

    #[tokio::test]
    async fn filtered_reads_skip_blocks_without_the_substring_and_keep_cached_ones() {
        let storage = tests::memory_store().await;
        let (seg, blocks) = two_block_segment(&storage).await;
        let needle = |t: &str| Needle {
            text: t.to_string(),
            ignore_ascii_case: false,
        };
        let error = BlockFilter::new(vec![vec![needle("error")]]);
        let first = storage.read_block_if(&seg, &blocks[0], &error).await;
        assert!(first.unwrap().is_none(), "no line of block 0 holds 'error'");
        let second = storage.read_block_if(&seg, &blocks[1], &error).await;
        let kept: Vec<_> = second
            .unwrap()
            .unwrap()
            .iter()
            .map(|e| e.line.clone())
            .collect();
        assert_eq!(kept, ["GET /x 500 error"], "only lines holding the needle");
        // The kept lines are cached under the filter: the same search decodes nothing.
        let key = (seg.id, blocks[1].offset, error.key);
        assert!(storage.cache.lock().lru.contains(&key));
        assert!(storage
            .cache
            .lock()
            .lru
            .contains(&(seg.id, blocks[0].offset, error.key)));
        // Alternatives: either needle keeps a line.
        let either = BlockFilter::new(vec![vec![needle("nope"), needle("/ok")]]);
        let got = storage.read_block_if(&seg, &blocks[0], &either).await;
        assert_eq!(got.unwrap().unwrap().len(), 2);
        // Every group must be met, by the same line: "/ok" and "error" are both in block
        // 1's text, never in one line.
        let both = BlockFilter::new(vec![vec![needle("/ok")], vec![needle("error")]]);
        assert!(both.may_match(b"GET /x 500 errorGET /ok 200"));
        let none = storage.read_block_if(&seg, &blocks[1], &both).await;
        assert!(none.unwrap().is_none(), "no line holds both");
        // A needle found only across two lines of the block's text keeps nothing.
        let across = BlockFilter::new(vec![vec![needle("errorGET")]]);
        let none = storage.read_block_if(&seg, &blocks[1], &across).await;
        assert!(none.unwrap().is_none());
        // A block cached whole is returned whole; the engine filters its lines.
        storage.cache.lock().lru.clear();
        assert_eq!(storage.read_block(&seg, &blocks[1]).await.unwrap().len(), 2);
        let whole = storage.read_block_if(&seg, &blocks[1], &both).await;
        assert_eq!(whole.unwrap().unwrap().len(), 2);
        // `(?i)` needles ignore ASCII case.
        let folded = BlockFilter::new(vec![vec![Needle {
            text: "ERROR".to_string(),
            ignore_ascii_case: true,
        }]]);
        assert!(folded.may_match(b"... GET /x 500 Error ..."));
        assert!(!folded.may_match(b"... GET /x 200 ok ..."));
        assert!(!BlockFilter::new(vec![vec![needle("ERROR")]]).may_match(b"500 Error"));
        // An empty needle matches everything.
        assert!(BlockFilter::new(vec![vec![needle("")]]).is_empty());
    }
}

#[cfg(test)]
mod count_tests {
    use super::*;
    use crate::chunk::SealedBlock;
    use lode_push::LabelSet;

    #[tokio::test]
    async fn counts_from_cached_columns_equal_counts_from_the_block_until_it_is_forgotten() {
        let storage = tests::memory_store().await;
        let tenant = TenantId::new("t").unwrap();
        let entries: Vec<Entry> = (0..400)
            .map(|i| Entry {
                timestamp_ns: 1_000 + i * 10,
                line: "z".repeat(1 + (i % 9) as usize),
                structured_metadata: vec![(
                    "detected_level".to_string(),
                    ["info", "warn", "error"][(i % 3) as usize].to_string(),
                )]
                .into(),
            })
            .collect();
        let chunks = vec![FlushChunk {
            labels: LabelSet::parse(r#"{app="a"}"#).unwrap(),
            blocks: vec![SealedBlock::seal(entries, 1).unwrap()],
        }];
        let day = Day(20000);
        let seg = storage
            .write_segment(&tenant, day, chunks, vec![], vec![])
            .await
            .unwrap();
        let block = seg.footer.streams[0].chunks[0].blocks[0];
        let bytes = storage
            .read_range(&seg, block.offset..block.offset + u64::from(block.len))
            .await
            .unwrap();
        assert_eq!(storage.cached_count_bytes(), 0);
        for edges in [
            vec![1_500, 4_995],
            vec![0, 1_100, 2_000, 2_001, 3_333, 9_999],
            vec![4_990, 5_000],
        ] {
            let edges: Arc<[i64]> = edges.into();
            let got = storage.count_block(&seg, &block, edges.clone()).await;
            assert_eq!(got.unwrap(), count_columns(&bytes, &edges).unwrap());
            assert!(storage.cached_count_bytes() > 0, "the columns are kept");
        }
        storage.forget(&tenant, day, seg.id);
        assert_eq!(
            storage.cached_count_bytes(),
            0,
            "a forgotten segment's columns go"
        );
    }

    #[test]
    fn a_block_written_before_columns_counts_the_same_from_its_decoded_rows() {
        let entries: Vec<Entry> = (1..=10)
            .map(|ts| Entry {
                timestamp_ns: ts,
                line: "y".repeat(ts as usize),
                structured_metadata: if ts % 3 == 0 {
                    vec![("level".to_string(), "warn".to_string())].into()
                } else {
                    Default::default()
                },
            })
            .collect();
        let v1 = crate::chunk::tests::seal_v1(&entries);
        let v2 = SealedBlock::seal(entries, 1).unwrap();
        let edges = [0, 4, 7, 10];
        let counts = count_columns(&v2.bytes, &edges).unwrap();
        assert_eq!(counts.iter().map(|c| c.lines).sum::<u64>(), 10);
        assert_eq!(count_columns(&v1, &edges).unwrap(), counts);
    }

    #[test]
    fn columns_count_lines_and_bytes_per_span_and_metadata_set() {
        let entries: Vec<Entry> = (1..=10)
            .map(|ts| Entry {
                timestamp_ns: ts,
                line: "x".repeat(ts as usize),
                structured_metadata: if ts % 2 == 0 {
                    vec![("level".to_string(), "warn".to_string())].into()
                } else {
                    Default::default()
                },
            })
            .collect();
        let block = SealedBlock::seal(entries, 1).unwrap();
        let counts = count_columns(&block.bytes, &[2, 5, 8]).unwrap();
        let got: Vec<(i64, usize, u64, u64)> = counts
            .iter()
            .map(|c| (c.timestamp_ns, c.metadata.len(), c.lines, c.bytes))
            .collect();
        // (2, 5] holds 3, 4, 5; (5, 8] holds 6, 7, 8; 1, 2, 9 and 10 count nowhere.
        // Within a span, sets come in the order of their first line in the block.
        assert_eq!(
            got,
            [
                (5, 0, 2, 3 + 5),
                (5, 1, 1, 4),
                (8, 0, 1, 7),
                (8, 1, 2, 6 + 8),
            ]
        );
    }
}
