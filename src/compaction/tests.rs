//! Merges of segments written through `Storage`, read back through the index as queries
//! read them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::*;
use crate::clock::ManualClock;
use crate::storage::segment::FlushChunk;
use crate::storage::StorageConfig;

/// 2026-01-01T12:00:00Z.
const T0: i64 = 1_767_268_800_000_000_000;

fn tenant() -> TenantId {
    TenantId::new("t").unwrap()
}

use crate::testutil::{app_labels as labels, count_files, entry};

fn with_level(ts: i64, line: &str, level: &str) -> Entry {
    Entry {
        structured_metadata: vec![("level".to_string(), level.to_string())].into(),
        ..entry(ts, line)
    }
}

fn opts() -> CompactionOptions {
    CompactionOptions {
        min_segments: 2,
        target_size: 64 << 20,
        compression: Compression::at(3),
        // Small blocks and chunks, so a merge cuts several of each.
        block_size: 2048,
        chunk_size: 1024,
        delete_grace: Duration::from_secs(10),
    }
}

fn never(_: &SegmentMeta) -> bool {
    false
}

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    storage: Arc<Storage>,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let storage = Storage::open(&Fixture::config(&dir), clock.clone())
            .await
            .unwrap();
        Fixture {
            dir,
            clock,
            storage,
        }
    }

    fn config(dir: &tempfile::TempDir) -> StorageConfig {
        crate::testutil::store_config(dir.path(), crate::storage::DEFAULT_SAMPLE_CACHE_MB)
    }

    /// Writes one segment holding each stream's entries (one chunk of blocks of at most
    /// `per_block` entries each).
    async fn write(&self, streams: &[(&str, Vec<Entry>)]) -> Arc<SegmentMeta> {
        write(&self.storage, &self.clock, streams).await
    }

    fn object_count(&self) -> usize {
        count_files(&self.dir.path().join("chunks"))
    }
}

/// Writes one segment a second after the previous one (segment ids sort by creation
/// time, which orders entries of equal timestamps in a merge).
async fn write(
    storage: &Storage,
    clock: &ManualClock,
    streams: &[(&str, Vec<Entry>)],
) -> Arc<SegmentMeta> {
    clock.advance(Duration::from_secs(1));
    let chunks = streams
        .iter()
        .map(|(app, entries)| FlushChunk {
            labels: labels(app),
            blocks: entries
                .chunks(3)
                .map(|c| SealedBlock::seal(c.to_vec(), 1).unwrap())
                .collect(),
        })
        .collect();
    storage
        .write_segment(&tenant(), Day::of_ns(T0), chunks, vec![], vec![])
        .await
        .unwrap()
}

/// Every stored entry of a stream, as a query reads it: index → chunks → blocks, merged
/// by timestamp (stable: chunks in index order).
async fn stored(storage: &Storage, app: &str) -> Vec<Entry> {
    let index = storage.index();
    let id = index.stream_id(&tenant(), &labels(app));
    let mut out = Vec::new();
    for sc in index.segment_chunks(&tenant(), id, 0, i64::MAX) {
        for block in &sc.info().unwrap().blocks {
            out.extend(
                storage
                    .read_block(&sc.segment, block)
                    .await
                    .unwrap()
                    .iter()
                    .cloned(),
            );
        }
    }
    out.sort_by_key(|e| e.timestamp_ns);
    out
}

/// Per stream and structured-metadata set: (lines, line bytes) from footer summaries,
/// and the stream's total (lines, raw bytes) from block headers.
type Totals = (
    HashMap<(LabelSet, Vec<(String, String)>), (u64, u64)>,
    HashMap<LabelSet, (u64, u64)>,
);

fn totals(segments: &[Arc<SegmentMeta>]) -> Totals {
    let mut groups = HashMap::new();
    let mut streams = HashMap::new();
    for seg in segments {
        for s in &seg.footer.streams {
            for c in &s.chunks {
                assert_eq!(c.blocks.len(), c.summaries.len());
                for (b, summary) in c.blocks.iter().zip(&c.summaries) {
                    let t: &mut (u64, u64) = streams.entry(s.labels.clone()).or_default();
                    t.0 += u64::from(b.meta.count);
                    t.1 += b.meta.raw_bytes;
                    for g in &summary.as_ref().expect("every block has a summary").groups {
                        let t: &mut (u64, u64) = groups
                            .entry((s.labels.clone(), g.metadata.clone()))
                            .or_default();
                        t.0 += u64::from(g.count);
                        t.1 += g.bytes;
                    }
                }
            }
        }
    }
    (groups, streams)
}

#[tokio::test]
async fn merging_keeps_every_entry_once_in_time_order_across_streams_split_over_segments() {
    let f = Fixture::new().await;
    // Three streams, each spread over five segments; segments overlap in time (an
    // out-of-order push lands in a later segment) and one stream skips some segments.
    let mut expected: HashMap<&str, Vec<Entry>> = HashMap::new();
    for s in 0..5i64 {
        let mut streams = Vec::new();
        for app in ["api", "web", "db"] {
            if app == "db" && s % 2 == 1 {
                continue;
            }
            let entries: Vec<Entry> = (0..20i64)
                .map(|i| {
                    // Segment s holds timestamps s, s+5, s+10, ...: every segment
                    // interleaves with every other.
                    let ts = T0 + (i * 5 + s) * 1000;
                    let line = format!("{app} {s} {i} {}", "x".repeat((i % 7) as usize * 40));
                    if i % 3 == 0 {
                        with_level(ts, &line, "error")
                    } else {
                        entry(ts, &line)
                    }
                })
                .collect();
            expected.entry(app).or_default().extend(entries.clone());
            streams.push((app, entries));
        }
        f.write(&streams).await;
    }
    let before = f.storage.segments(&tenant());
    assert_eq!(before.len(), 5);
    assert_eq!(f.object_count(), 5);
    let old_totals = totals(&before);
    let old_ids: Vec<_> = before.iter().map(|m| m.id).collect();
    drop(before);

    let stats = Compactor::new(opts(), f.storage.clone())
        .run_once(&never)
        .await;
    assert_eq!(stats.failed_merges, 0);
    assert_eq!(stats.compacted_segments, 5);
    assert_eq!(stats.written_segments, 1);
    assert_eq!(stats.collapsed_entries, 0);
    assert!(stats.written_bytes > 0);

    let after = f.storage.segments(&tenant());
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].footer.replaces, old_ids);
    assert_eq!(f.object_count(), 1, "the old objects are deleted");
    // Several blocks and chunks per stream: the small block and chunk sizes were used.
    let api = after[0]
        .footer
        .streams
        .iter()
        .find(|s| s.labels == labels("api"))
        .unwrap();
    assert!(api.chunks.len() > 1);
    assert!(api.chunks.iter().map(|c| c.blocks.len()).sum::<usize>() > 2);
    for app in ["api", "web", "db"] {
        let mut want = expected.remove(app).unwrap();
        want.sort_by_key(|e| e.timestamp_ns);
        // Blocks come out in time order, each sorted: read without sorting.
        let mut got = Vec::new();
        let s = after[0]
            .footer
            .streams
            .iter()
            .find(|s| s.labels == labels(app))
            .unwrap();
        for c in &s.chunks {
            for b in &c.blocks {
                got.extend(
                    f.storage
                        .read_block(&after[0], b)
                        .await
                        .unwrap()
                        .iter()
                        .cloned(),
                );
            }
        }
        assert_eq!(got, want, "stream {app}");
        assert_eq!(stored(&f.storage, app).await, want);
    }
    assert_eq!(totals(&after), old_totals, "counts and summaries add up");

    // A reopened store sees only the new segment.
    let reopened = Storage::open(&Fixture::config(&f.dir), Arc::new(ManualClock::new(T0)))
        .await
        .unwrap();
    assert_eq!(reopened.segments(&tenant()).len(), 1);
    assert_eq!(
        stored(&reopened, "web").await,
        stored(&f.storage, "web").await
    );
}

#[tokio::test]
async fn identical_entries_of_a_stream_collapse_to_one() {
    let f = Fixture::new().await;
    f.write(&[
        (
            "api",
            vec![
                entry(T0, "a"),
                entry(T0, "b"),
                with_level(T0 + 1, "c", "warn"),
            ],
        ),
        ("web", vec![entry(T0, "a")]),
    ])
    .await;
    f.write(&[
        (
            "api",
            vec![
                entry(T0, "b"),                   // duplicate
                entry(T0, "a"),                   // duplicate
                entry(T0, "a2"),                  // same time, other line: kept
                with_level(T0 + 1, "c", "warn"),  // duplicate, metadata included
                with_level(T0 + 1, "c", "error"), // other metadata: kept
                entry(T0 + 1, "c"),               // no metadata: kept
            ],
        ),
        ("web", vec![entry(T0, "a")]), // duplicate within web only
    ])
    .await;
    let stats = Compactor::new(opts(), f.storage.clone())
        .run_once(&never)
        .await;
    assert_eq!(stats.compacted_segments, 2);
    assert_eq!(stats.collapsed_entries, 4);
    let api: Vec<(i64, String, usize)> = stored(&f.storage, "api")
        .await
        .into_iter()
        .map(|e| (e.timestamp_ns - T0, e.line, e.structured_metadata.len()))
        .collect();
    // Equal timestamps keep the order they were written in: older segment first.
    assert_eq!(
        api,
        [
            (0, "a".to_string(), 0),
            (0, "b".to_string(), 0),
            (0, "a2".to_string(), 0),
            (1, "c".to_string(), 1),
            (1, "c".to_string(), 1),
            (1, "c".to_string(), 0),
        ]
    );
    let levels: Vec<_> = stored(&f.storage, "api")
        .await
        .into_iter()
        .filter(|e| e.timestamp_ns == T0 + 1)
        .map(|e| e.structured_metadata)
        .collect();
    assert_eq!(levels[0], vec![("level".to_string(), "warn".to_string())]);
    assert_eq!(levels[1], vec![("level".to_string(), "error".to_string())]);
    assert_eq!(stored(&f.storage, "web").await, vec![entry(T0, "a")]);
    let seg = &f.storage.segments(&tenant())[0];
    assert_eq!(seg.footer.meta().count, 7);
}

#[tokio::test]
async fn a_long_run_of_one_timestamp_is_split_and_still_collapses_duplicates() {
    let f = Fixture::new().await;
    // 200 distinct lines at one timestamp (≈ 9 KiB, over 4 × 2048 bytes) in each of two
    // segments: the run is split into several blocks, and the second copy of every line
    // still meets the first.
    let run: Vec<Entry> = (0..200)
        .map(|i| entry(T0, &format!("line {i:040}")))
        .collect();
    f.write(&[("api", run.clone())]).await;
    f.write(&[("api", run.clone())]).await;
    let stats = Compactor::new(opts(), f.storage.clone())
        .run_once(&never)
        .await;
    assert_eq!(stats.collapsed_entries, 200);
    let seg = &f.storage.segments(&tenant())[0];
    let blocks: usize = seg.footer.streams[0]
        .chunks
        .iter()
        .map(|c| c.blocks.len())
        .sum();
    assert!(blocks > 1, "the run was split ({blocks} block)");
    assert_eq!(stored(&f.storage, "api").await, run);
}

/// A segment of `size` bytes on `day`, for planning only.
fn sized(id: u128, day: i64, size: u64) -> Arc<SegmentMeta> {
    Arc::new(SegmentMeta {
        id: SegmentId(id),
        path: ObjectPath::from(format!("t/{id}")),
        size,
        footer: Footer {
            tenant: tenant(),
            day: Day(day),
            replaces: Vec::new(),
            streams: Vec::new(),
        },
    })
}

fn planned(segments: &[Arc<SegmentMeta>], o: &CompactionOptions) -> Vec<Vec<u128>> {
    plan(segments, o, &never)
        .into_iter()
        .map(|g| g.iter().map(|m| m.id.0).collect())
        .collect()
}

#[test]
fn min_segments_and_target_size_decide_what_is_merged() {
    let o = CompactionOptions {
        min_segments: 3,
        target_size: 100,
        ..opts()
    };
    // Too few small segments: nothing.
    assert!(planned(&[sized(1, 0, 10), sized(2, 0, 10), sized(3, 0, 100)], &o).is_empty());
    // Segments of another day do not count towards this day's minimum.
    assert!(planned(&[sized(1, 0, 10), sized(2, 0, 10), sized(3, 1, 10)], &o).is_empty());
    // Three small ones merge; the one at the target size is left alone.
    assert_eq!(
        planned(
            &[
                sized(1, 0, 10),
                sized(2, 0, 100),
                sized(3, 0, 20),
                sized(4, 0, 10)
            ],
            &o
        ),
        [vec![1, 4, 3]]
    );
    // No group exceeds the target size: six segments of 30 make two groups of three.
    let six: Vec<_> = (1..=6).map(|i| sized(i, 0, 30)).collect();
    assert_eq!(planned(&six, &o), [vec![1, 2, 3], vec![4, 5, 6]]);
    // Size-tiered: once the minimum is met, a segment larger than all taken so far
    // waits for peers of its size instead of being rewritten with small ones.
    assert_eq!(
        planned(
            &[
                sized(1, 0, 5),
                sized(2, 0, 5),
                sized(3, 0, 5),
                sized(4, 0, 60)
            ],
            &o
        ),
        [vec![1, 2, 3]]
    );
    assert_eq!(
        planned(
            &[
                sized(1, 0, 5),
                sized(2, 0, 5),
                sized(3, 0, 5),
                sized(4, 0, 15)
            ],
            &o
        ),
        [vec![1, 2, 3, 4]]
    );
    // Each day on its own.
    let days: Vec<_> = (1..=6).map(|i| sized(i, (i % 2) as i64, 10)).collect();
    assert_eq!(planned(&days, &o), [vec![2, 4, 6], vec![1, 3, 5]]);
    // Skipped segments (retention's) are not merged.
    let skip_two = |m: &SegmentMeta| m.id.0 == 2;
    let groups = plan(
        &[
            sized(1, 0, 10),
            sized(2, 0, 10),
            sized(3, 0, 10),
            sized(4, 0, 10),
        ],
        &o,
        &skip_two,
    );
    let ids: Vec<Vec<u128>> = groups
        .iter()
        .map(|g| g.iter().map(|m| m.id.0).collect())
        .collect();
    assert_eq!(ids, [vec![1, 3, 4]]);
}

#[tokio::test]
async fn min_segments_is_respected_by_a_pass() {
    let f = Fixture::new().await;
    f.write(&[("api", vec![entry(T0, "a")])]).await;
    f.write(&[("api", vec![entry(T0 + 1, "b")])]).await;
    let o = CompactionOptions {
        min_segments: 3,
        ..opts()
    };
    let stats = Compactor::new(o, f.storage.clone()).run_once(&never).await;
    assert_eq!(stats, PassStats::default());
    assert_eq!(f.object_count(), 2);
    f.write(&[("api", vec![entry(T0 + 2, "c")])]).await;
    let stats = Compactor::new(o, f.storage.clone()).run_once(&never).await;
    assert_eq!(stats.compacted_segments, 3);
    assert_eq!(f.object_count(), 1);
}

/// An in-memory store whose writes fail while `fail_puts` is set.
#[derive(Debug, Default)]
struct FlakyStore {
    inner: object_store::memory::InMemory,
    fail_puts: AtomicBool,
}

impl std::fmt::Display for FlakyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlakyStore")
    }
}

#[async_trait::async_trait]
impl ObjectStore for FlakyStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fail_puts.load(Ordering::Relaxed) {
            return Err(object_store::Error::Generic {
                store: "FlakyStore",
                source: "disk full".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[tokio::test]
async fn a_failed_write_leaves_the_old_segments_readable_and_the_next_pass_retries() {
    let store = Arc::new(FlakyStore::default());
    let clock = Arc::new(ManualClock::new(T0));
    let storage = Storage::with_object_store(store.clone(), 1 << 20, clock.clone())
        .await
        .unwrap();
    let mut want = Vec::new();
    for s in 0..3 {
        let entries: Vec<Entry> = (0..10)
            .map(|i| entry(T0 + i * 3 + s, &format!("{s} {i}")))
            .collect();
        want.extend(entries.clone());
        write(&storage, &clock, &[("api", entries)]).await;
    }
    want.sort_by_key(|e| e.timestamp_ns);
    let compactor = Compactor::new(opts(), storage.clone());

    store.fail_puts.store(true, Ordering::Relaxed);
    let stats = compactor.run_once(&never).await;
    assert_eq!(stats.failed_merges, 1);
    assert_eq!(stats.written_segments, 0);
    assert_eq!(storage.segments(&tenant()).len(), 3);
    assert_eq!(stored(&storage, "api").await, want);
    let listed: Vec<_> = futures::StreamExt::collect::<Vec<_>>(store.list(None)).await;
    assert_eq!(listed.len(), 3, "nothing written, nothing deleted");

    store.fail_puts.store(false, Ordering::Relaxed);
    let stats = compactor.run_once(&never).await;
    assert_eq!(stats.failed_merges, 0);
    assert_eq!(stats.compacted_segments, 3);
    assert_eq!(storage.segments(&tenant()).len(), 1);
    assert_eq!(stored(&storage, "api").await, want);
}

#[tokio::test]
async fn a_corrupt_block_fails_the_merge_and_keeps_every_segment() {
    let f = Fixture::new().await;
    let a = f
        .write(&[("api", vec![entry(T0, "a"), entry(T0 + 1, "b")])])
        .await;
    f.write(&[("api", vec![entry(T0 + 2, "c")])]).await;
    // Flip a byte inside the first block's payload on disk.
    let block = a.footer.streams[0].chunks[0].blocks[0];
    let path = f.dir.path().join("chunks").join(a.path.to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(block.offset + u64::from(block.len) - 1) as usize] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let stats = Compactor::new(opts(), f.storage.clone())
        .run_once(&never)
        .await;
    assert_eq!(stats.failed_merges, 1);
    assert_eq!(f.storage.segments(&tenant()).len(), 2);
    assert_eq!(f.object_count(), 2);
}

#[tokio::test]
async fn an_old_segment_is_deleted_only_once_no_query_holds_it() {
    let f = Fixture::new().await;
    let a = f.write(&[("api", vec![entry(T0, "a")])]).await;
    f.write(&[("api", vec![entry(T0 + 1, "b")])]).await;
    let old_file = f.dir.path().join("chunks").join(a.path.to_string());
    // `a` stands for a query that planned its reads before the swap and still runs.
    let compactor = Arc::new(Compactor::new(opts(), f.storage.clone()));
    let pass = tokio::spawn({
        let c = compactor.clone();
        async move { c.run_once(&never).await }
    });
    while f.storage.segments(&tenant()).len() != 1 {
        tokio::task::yield_now().await;
    }
    assert!(old_file.exists(), "deleted while a reader holds it");
    assert_eq!(
        stored(&f.storage, "api").await.len(),
        2,
        "new readers see the merge"
    );
    drop(a);
    let stats = pass.await.unwrap();
    assert_eq!(stats.compacted_segments, 2);
    assert!(!old_file.exists());
}

#[tokio::test]
async fn a_read_of_a_segment_deleted_after_the_grace_period_fails_clearly() {
    let f = Fixture::new().await;
    let a = f.write(&[("api", vec![entry(T0, "a")])]).await;
    f.write(&[("api", vec![entry(T0 + 1, "b")])]).await;
    let block = a.footer.streams[0].chunks[0].blocks[0];
    let o = CompactionOptions {
        delete_grace: Duration::ZERO,
        ..opts()
    };
    let stats = Compactor::new(o, f.storage.clone()).run_once(&never).await;
    assert_eq!(stats.compacted_segments, 2);
    assert_eq!(f.object_count(), 1);
    let err = f.storage.read_block(&a, &block).await.unwrap_err();
    assert!(matches!(err, storage::Error::Gone { .. }), "{err}");
    assert!(err.to_string().contains("run the query again"), "{err}");
}
