//! Unit tests of the ingester against a real WAL and a filesystem store in a temp dir.

use std::path::Path;

use super::*;
use crate::clock::ManualClock;
use crate::storage::{FilesystemConfig, StorageConfig};

/// 2026-01-01T12:00:00Z.
const T0: i64 = 1_767_268_800_000_000_000;
const SEC: i64 = 1_000_000_000;

fn tenant() -> TenantId {
    TenantId::new("team-a").unwrap()
}

use crate::testutil::app_labels as labels;

use crate::testutil::entry;

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(ManualClock::new(T0)),
        }
    }

    async fn open(&self, cfg: IngesterConfig) -> (Arc<Ingester>, Arc<Storage>) {
        let storage = open_storage(self.dir.path(), self.clock.clone()).await;
        let ing = Ingester::open(cfg, self.dir.path().join("wal"), storage.clone())
            .await
            .unwrap();
        (ing, storage)
    }
}

async fn open_storage(dir: &Path, clock: Arc<ManualClock>) -> Arc<Storage> {
    let cfg = StorageConfig {
        filesystem: FilesystemConfig {
            directory: dir.join("chunks"),
        },
        ..StorageConfig::default()
    };
    Storage::open(&cfg, clock).await.unwrap()
}

fn lines(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.line.as_str()).collect()
}

#[tokio::test]
async fn pushed_entries_are_returned_by_head_entries_in_time_order() {
    let f = Fixture::new();
    let (ing, _) = f.open(IngesterConfig::default()).await;
    let out = ing
        .push(
            &tenant(),
            vec![(
                labels("api"),
                vec![entry(T0 + 2, "b"), entry(T0 + 1, "a"), entry(T0 + 2, "c")],
            )],
        )
        .await
        .unwrap();
    assert_eq!(out.accepted_entries, 3);
    assert_eq!(out.accepted_bytes, 3);
    assert!(out.rejected.is_empty());
    let got = ing.head_entries(&tenant(), &labels("api"), T0, T0 + 3);
    assert_eq!(lines(&got), ["a", "b", "c"]);
    // The end is exclusive and other streams or tenants see nothing.
    assert_eq!(
        lines(&ing.head_entries(&tenant(), &labels("api"), T0, T0 + 2)),
        ["a"]
    );
    assert!(ing
        .head_entries(&tenant(), &labels("web"), T0, T0 + 3)
        .is_empty());
    let other = TenantId::new("team-b").unwrap();
    assert!(ing
        .head_entries(&other, &labels("api"), T0, T0 + 3)
        .is_empty());
}

#[tokio::test]
async fn acknowledged_entries_are_replayed_after_reopen() {
    let f = Fixture::new();
    {
        let (ing, _) = f.open(IngesterConfig::default()).await;
        ing.push(
            &tenant(),
            vec![(labels("api"), vec![entry(T0, "one"), entry(T0 + 1, "two")])],
        )
        .await
        .unwrap();
        ing.push(&tenant(), vec![(labels("web"), vec![entry(T0, "three")])])
            .await
            .unwrap();
    }
    let (ing, storage) = f.open(IngesterConfig::default()).await;
    assert_eq!(
        lines(&ing.head_entries(&tenant(), &labels("api"), T0, T0 + 10)),
        ["one", "two"]
    );
    assert_eq!(
        lines(&ing.head_entries(&tenant(), &labels("web"), T0, T0 + 10)),
        ["three"]
    );
    // Replayed streams are visible to label queries before any flush.
    let streams = storage.index().streams(&tenant(), &[], T0, T0 + 10);
    assert_eq!(streams.len(), 2);
}

#[tokio::test]
async fn flush_all_writes_a_segment_in_the_index_and_empties_heads() {
    let f = Fixture::new();
    let (ing, storage) = f.open(IngesterConfig::default()).await;
    ing.push(
        &tenant(),
        vec![(labels("api"), vec![entry(T0, "one"), entry(T0 + 1, "two")])],
    )
    .await
    .unwrap();
    ing.flush_all().await.unwrap();
    assert!(ing
        .head_entries(&tenant(), &labels("api"), T0, T0 + 10)
        .is_empty());
    let segments = storage.segments(&tenant());
    assert_eq!(segments.len(), 1);
    let streams = storage.index().streams(&tenant(), &[], T0, T0 + 10);
    assert_eq!(streams.len(), 1);
    let chunks = storage
        .index()
        .segment_chunks(&tenant(), streams[0].id, T0, T0 + 10);
    assert_eq!(chunks.len(), 1);
    let info = chunks[0].info().unwrap();
    let block = storage
        .read_block(&chunks[0].segment, &info.blocks[0])
        .await
        .unwrap();
    assert_eq!(lines(&block), ["one", "two"]);
    // The WAL was checkpointed: reopening replays nothing back into heads.
    drop(ing);
    let (ing, _) = f.open(IngesterConfig::default()).await;
    assert!(ing
        .head_entries(&tenant(), &labels("api"), T0, T0 + 10)
        .is_empty());
}

#[tokio::test]
async fn the_out_of_order_window_defaults_to_half_of_max_chunk_age() {
    let f = Fixture::new();
    let hour = 3600 * SEC;
    let cfg = IngesterConfig {
        max_chunk_age: Duration::from_secs(4 * 3600),
        ..IngesterConfig::default()
    };
    assert_eq!(cfg.out_of_order_window(), Duration::from_secs(2 * 3600));
    let (ing, _) = f.open(cfg).await;
    ing.push(&tenant(), vec![(labels("api"), vec![entry(T0, "newest")])])
        .await
        .unwrap();
    let out = ing
        .push(
            &tenant(),
            vec![(
                labels("api"),
                vec![
                    entry(T0 - 2 * hour + SEC, "inside a 2h window"),
                    entry(T0 - 2 * hour - SEC, "outside"),
                ],
            )],
        )
        .await
        .unwrap();
    assert_eq!(out.accepted_entries, 1);
    assert_eq!(out.rejected.len(), 1);
    let explicit = IngesterConfig {
        max_chunk_age: Duration::from_secs(4 * 3600),
        out_of_order_time_window: Some(Duration::from_secs(600)),
        ..IngesterConfig::default()
    };
    assert_eq!(explicit.out_of_order_window(), Duration::from_secs(600));
}

#[tokio::test]
async fn entries_beyond_the_out_of_order_window_are_rejected_as_too_far_behind() {
    let f = Fixture::new();
    let (ing, _) = f.open(IngesterConfig::default()).await;
    let hour = 3600 * SEC;
    ing.push(&tenant(), vec![(labels("api"), vec![entry(T0, "newest")])])
        .await
        .unwrap();
    let out = ing
        .push(
            &tenant(),
            vec![(
                labels("api"),
                vec![
                    entry(T0 - hour + SEC, "inside window"),
                    entry(T0 - hour - SEC, "too old"),
                    entry(T0 - 2 * hour, "older"),
                ],
            )],
        )
        .await
        .unwrap();
    assert_eq!(out.accepted_entries, 1);
    assert_eq!(out.rejected.len(), 1);
    let r = &out.rejected[0];
    assert_eq!(r.reason, "too_far_behind");
    assert_eq!((r.entries, r.bytes), (2, "too old".len() + "older".len()));
    assert_eq!(r.labels, labels("api"));
    assert_eq!(
        r.message,
        "entry too far behind, entry timestamp is: 2026-01-01T10:59:59Z, \
         oldest acceptable timestamp is: 2026-01-01T11:00:00Z"
    );
    assert_eq!(
        lines(&ing.head_entries(&tenant(), &labels("api"), 0, i64::MAX)),
        ["inside window", "newest"]
    );
    // The window is per stream: a new stream accepts an old entry.
    let out = ing
        .push(
            &tenant(),
            vec![(labels("web"), vec![entry(T0 - 2 * hour, "old")])],
        )
        .await
        .unwrap();
    assert_eq!(out.accepted_entries, 1);
}

#[tokio::test]
async fn exact_duplicates_are_dropped_but_same_time_other_lines_are_kept() {
    let f = Fixture::new();
    let (ing, _) = f.open(IngesterConfig::default()).await;
    let batch = vec![entry(T0, "a"), entry(T0, "a"), entry(T0, "b")];
    let out = ing
        .push(&tenant(), vec![(labels("api"), batch)])
        .await
        .unwrap();
    assert_eq!(out.accepted_entries, 2);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].reason, "duplicate");
    assert_eq!((out.rejected[0].entries, out.rejected[0].bytes), (1, 1));
    let out = ing
        .push(
            &tenant(),
            vec![(labels("api"), vec![entry(T0, "b"), entry(T0 + 1, "b")])],
        )
        .await
        .unwrap();
    assert_eq!(out.accepted_entries, 1);
    assert_eq!(
        lines(&ing.head_entries(&tenant(), &labels("api"), T0, T0 + 2)),
        ["a", "b", "b"]
    );
}

#[tokio::test]
async fn subscribers_see_accepted_entries_only() {
    let f = Fixture::new();
    let (ing, _) = f.open(IngesterConfig::default()).await;
    let mut rx = ing.subscribe();
    ing.push(
        &tenant(),
        vec![(labels("api"), vec![entry(T0, "a"), entry(T0, "a")])],
    )
    .await
    .unwrap();
    let got = rx.recv().await.unwrap();
    assert_eq!(got.tenant, tenant());
    assert_eq!(got.labels, labels("api"));
    assert_eq!(lines(&got.entries), ["a"]);
}

fn small_chunks() -> IngesterConfig {
    IngesterConfig {
        chunk_block_size: 64,
        chunk_target_size: 1,
        ..IngesterConfig::default()
    }
}

fn numbered(from: i64, n: i64) -> Vec<Entry> {
    (from..from + n)
        .map(|i| entry(T0 + i, &format!("line number {i:04} with some padding")))
        .collect()
}

#[tokio::test]
async fn head_blocks_are_cut_at_block_size_and_reads_still_see_every_entry() {
    let f = Fixture::new();
    let (ing, storage) = f.open(small_blocks()).await;
    ing.push(&tenant(), vec![(labels("api"), numbered(0, 20))])
        .await
        .unwrap();
    let got = ing.head_entries(&tenant(), &labels("api"), T0, T0 + 20);
    assert_eq!(got, numbered(0, 20));
    ing.flush_all().await.unwrap();
    let seg = &storage.segments(&tenant())[0];
    let blocks = &seg.footer.streams[0].chunks[0].blocks;
    // 20 lines of 36 bytes in blocks cut at 200 bytes: 6 lines per block, and the rest.
    assert_eq!(
        blocks.iter().map(|b| b.meta.count).collect::<Vec<_>>(),
        [6, 6, 6, 2]
    );
}

#[tokio::test]
async fn a_chunk_at_target_size_closes_and_flushes_while_the_stream_continues() {
    let f = Fixture::new();
    let (ing, storage) = f.open(small_chunks()).await;
    // Two full blocks close two chunks; the last entry stays in the open head block.
    ing.push(&tenant(), vec![(labels("api"), numbered(0, 5))])
        .await
        .unwrap();
    // Chunks close as their blocks are sealed, which the push leaves to the pool.
    ing.sealed().await;
    ing.flush_due().await.unwrap();
    let segs = storage.segments(&tenant());
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].footer.streams[0].chunks.len(), 2);
    assert_eq!(
        ing.head_entries(&tenant(), &labels("api"), T0, T0 + 10),
        numbered(4, 1)
    );
}

#[tokio::test]
async fn chunks_close_after_max_age_and_after_idle_period() {
    let f = Fixture::new();
    let cfg = IngesterConfig {
        max_chunk_age: Duration::from_secs(7200),
        chunk_idle_period: Duration::from_secs(1800),
        ..IngesterConfig::default()
    };
    let (ing, storage) = f.open(cfg).await;
    // Idle: one push, then 29 minutes keep it open, 30 close it.
    ing.push(&tenant(), vec![(labels("idle"), numbered(0, 1))])
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(29 * 60));
    ing.flush_due().await.unwrap();
    assert!(storage.segments(&tenant()).is_empty());
    f.clock.advance(Duration::from_secs(60));
    ing.flush_due().await.unwrap();
    assert_eq!(storage.segments(&tenant()).len(), 1);
    // Age: a push every 20 minutes is never idle, but the chunk closes at 2h.
    for i in 0..6 {
        ing.push(&tenant(), vec![(labels("busy"), numbered(10 + i, 1))])
            .await
            .unwrap();
        f.clock.advance(Duration::from_secs(20 * 60));
        ing.flush_due().await.unwrap();
        let flushed = storage.segments(&tenant()).len() == 2;
        assert_eq!(flushed, i == 5, "after push {i}");
    }
    assert!(ing
        .head_entries(&tenant(), &labels("busy"), T0, T0 + 100)
        .is_empty());
}

#[tokio::test]
async fn a_partial_flush_keeps_unflushed_entries_in_the_wal_exactly_once() {
    let f = Fixture::new();
    let cfg = IngesterConfig {
        chunk_idle_period: Duration::from_secs(60),
        ..IngesterConfig::default()
    };
    {
        let (ing, _) = f.open(cfg.clone()).await;
        ing.push(&tenant(), vec![(labels("old"), numbered(0, 3))])
            .await
            .unwrap();
        f.clock.advance(Duration::from_secs(120));
        ing.push(&tenant(), vec![(labels("new"), numbered(3, 3))])
            .await
            .unwrap();
        ing.flush_due().await.unwrap();
    }
    let (ing, storage) = f.open(cfg).await;
    assert_eq!(storage.segments(&tenant()).len(), 1);
    assert!(ing
        .head_entries(&tenant(), &labels("old"), T0, T0 + 10)
        .is_empty());
    assert_eq!(
        ing.head_entries(&tenant(), &labels("new"), T0, T0 + 10),
        numbered(3, 3)
    );
}

#[tokio::test]
async fn a_crash_between_segment_write_and_wal_checkpoint_returns_entries_once() {
    let f = Fixture::new();
    let wal = f.dir.path().join("wal");
    let saved = f.dir.path().join("wal-before-checkpoint");
    {
        let (ing, _) = f.open(IngesterConfig::default()).await;
        ing.push(&tenant(), vec![(labels("api"), numbered(0, 3))])
            .await
            .unwrap();
        copy_dir(&wal, &saved);
        ing.flush_all().await.unwrap();
        ing.push(&tenant(), vec![(labels("api"), numbered(3, 1))])
            .await
            .unwrap();
        copy_dir(&wal, &saved);
    }
    // As if the process died before the checkpoint deleted the flushed records.
    std::fs::remove_dir_all(&wal).unwrap();
    std::fs::rename(&saved, &wal).unwrap();
    let (ing, _) = f.open(IngesterConfig::default()).await;
    assert_eq!(
        ing.head_entries(&tenant(), &labels("api"), T0, T0 + 10),
        numbered(3, 1)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        std::fs::copy(item.path(), to.join(item.file_name())).unwrap();
    }
}

#[tokio::test]
async fn the_flush_loop_writes_idle_chunks_without_being_asked() {
    let f = Fixture::new();
    let cfg = IngesterConfig {
        chunk_idle_period: Duration::from_secs(60),
        flush_check_period: Duration::from_millis(20),
        ..IngesterConfig::default()
    };
    let (ing, storage) = f.open(cfg).await;
    let metrics = Arc::new(Metrics::new());
    ing.set_metrics(metrics.clone());
    let task = ing.start();
    ing.push(&tenant(), vec![(labels("api"), numbered(0, 2))])
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(61));
    // Wait for the loop (not a timing assertion: the bound only stops a broken loop).
    for _ in 0..1000 {
        if !storage.segments(&tenant()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(storage.segments(&tenant()).len(), 1);
    assert!(ing
        .head_entries(&tenant(), &labels("api"), T0, T0 + 10)
        .is_empty());
    let text = metrics.encode();
    assert!(text.contains("lode_ingester_flushes_total 1"), "{text}");
    assert!(
        text.contains("lode_ingester_chunks_flushed_total 1"),
        "{text}"
    );
    task.abort();
}

#[tokio::test]
async fn a_memory_bound_flushes_sealed_blocks_early_and_keeps_the_open_head() {
    let f = Fixture::new();
    let cfg = IngesterConfig {
        chunk_block_size: 200,
        max_sealed_bytes: 1,
        flush_check_period: Duration::from_secs(3600),
        ..IngesterConfig::default()
    };
    {
        let (ing, storage) = f.open(cfg.clone()).await;
        let task = ing.start();
        // 20 lines of 36 bytes: three sealed blocks of 6, two lines in the head block.
        ing.push(&tenant(), vec![(labels("api"), numbered(0, 20))])
            .await
            .unwrap();
        // Wait for the loop (not a timing assertion: the bound only stops a broken loop).
        for _ in 0..1000 {
            if !storage.segments(&tenant()).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        let segs = storage.segments(&tenant());
        assert_eq!(segs.len(), 1, "memory pressure wrote a segment");
        let blocks = &segs[0].footer.streams[0].chunks[0].blocks;
        assert_eq!(
            blocks.iter().map(|b| b.meta.count).collect::<Vec<_>>(),
            [6, 6, 6]
        );
        assert_eq!(
            ing.head_entries(&tenant(), &labels("api"), T0, T0 + 100),
            numbered(18, 2)
        );
        // The stream goes on in the same open chunk; a re-sent entry is still a duplicate.
        let out = ing
            .push(
                &tenant(),
                vec![(labels("api"), [numbered(19, 1), numbered(20, 2)].concat())],
            )
            .await
            .unwrap();
        assert_eq!(out.accepted_entries, 2);
        assert_eq!(out.rejected[0].reason, REASON_DUPLICATE);
    }
    // After a restart the WAL gives back exactly what no segment holds.
    let (ing, storage) = f.open(cfg).await;
    assert_eq!(
        ing.head_entries(&tenant(), &labels("api"), T0, T0 + 100),
        numbered(18, 4)
    );
    ing.flush_all().await.unwrap();
    assert_eq!(stored_entries(&storage).await, numbered(0, 22));
}

#[tokio::test]
async fn structured_metadata_counts_toward_the_block_size() {
    let f = Fixture::new();
    let (ing, storage) = f.open(small_blocks()).await;
    // Empty lines with 100 bytes of metadata each: without counting the metadata the head
    // block would never reach the block size.
    let entries: Vec<Entry> = (0..10)
        .map(|i| Entry {
            timestamp_ns: T0 + i,
            line: String::new(),
            structured_metadata: vec![("trace_id".to_string(), "t".repeat(92))].into(),
        })
        .collect();
    ing.push(&tenant(), vec![(labels("api"), entries.clone())])
        .await
        .unwrap();
    ing.flush_all().await.unwrap();
    let seg = &storage.segments(&tenant())[0];
    let blocks = &seg.footer.streams[0].chunks[0].blocks;
    assert_eq!(
        blocks.iter().map(|b| b.meta.count).collect::<Vec<_>>(),
        [2, 2, 2, 2, 2]
    );
}

#[tokio::test]
async fn a_pressure_wake_up_under_the_bound_writes_nothing() {
    let f = Fixture::new();
    let (ing, storage) = f.open(small_blocks()).await;
    ing.push(&tenant(), vec![(labels("api"), numbered(0, 20))])
        .await
        .unwrap();
    // Three sealed blocks are far below the default 16 MiB: a late wake-up (pushes made
    // during a flush that already brought memory down) must not write a tiny segment.
    ing.flush_sealed().await.unwrap();
    assert!(storage.segments(&tenant()).is_empty());
}

/// Head blocks cut every 200 raw bytes: a few short lines each.
fn small_blocks() -> IngesterConfig {
    IngesterConfig {
        chunk_block_size: 200,
        ..IngesterConfig::default()
    }
}

#[tokio::test]
async fn the_sealing_pool_puts_a_pushs_cut_blocks_in_place_after_the_push() {
    let f = Fixture::new();
    let (ing, _) = f.open(small_blocks()).await;
    ing.push(&tenant(), vec![(labels("api"), numbered(0, 20))])
        .await
        .unwrap();
    ing.sealed().await;
    {
        let heads = ing.heads.lock();
        let day = &heads.tenants[&tenant()][&labels("api")].days[&Day::of_ns(T0)];
        assert!(day.open.pending.is_empty(), "every cut block was sealed");
        assert_eq!(
            day.open
                .blocks
                .iter()
                .map(|b| b.meta.count)
                .collect::<Vec<_>>(),
            [6, 6, 6]
        );
        assert_eq!(day.open.head.len(), 2);
        assert_eq!(
            heads.sealed_total,
            day.open.blocks.iter().map(|b| b.bytes.len()).sum::<usize>()
        );
    }
    assert_eq!(
        ing.head_entries(&tenant(), &labels("api"), T0, T0 + 100),
        numbered(0, 20)
    );
}

/// Cuts head blocks the way a push does before it compresses them (under the lock,
/// nothing sealed yet) and returns the cut blocks.
fn cut_without_sealing(ing: &Ingester, entries: Vec<Entry>) -> Vec<SealJob> {
    ing.heads.lock().append(
        &ing.cfg,
        &tenant(),
        &labels("api"),
        Arriving {
            entries,
            reserved: None,
        },
        SegmentNo(1),
        T0,
    )
}

async fn stored_entries(storage: &Storage) -> Vec<Entry> {
    let mut all = Vec::new();
    for seg in storage.segments(&tenant()) {
        for c in &seg.footer.streams[0].chunks {
            for b in &c.blocks {
                all.extend(storage.read_block(&seg, b).await.unwrap().iter().cloned());
            }
        }
    }
    all.sort_by_key(|e| e.timestamp_ns);
    all
}

#[tokio::test]
async fn blocks_being_sealed_stay_readable_and_join_their_chunk_in_cut_order() {
    let f = Fixture::new();
    let (ing, storage) = f.open(small_blocks()).await;
    // 20 lines of 36 bytes: three blocks of 6 cut, two lines in the head block.
    let mut jobs = cut_without_sealing(&ing, numbered(0, 20));
    assert_eq!(jobs.len(), 3);
    assert_eq!(
        ing.head_entries(&tenant(), &labels("api"), T0, T0 + 100),
        numbered(0, 20)
    );
    // The newest block is sealed first: it waits for the older ones, and reads still see
    // every entry once, whatever has been put in place.
    let last = jobs.pop().unwrap();
    ing.seal(&tenant(), vec![(labels("api"), vec![last])]);
    assert_eq!(
        ing.head_entries(&tenant(), &labels("api"), T0, T0 + 100),
        numbered(0, 20)
    );
    ing.seal(&tenant(), vec![(labels("api"), jobs)]);
    assert_eq!(
        ing.head_entries(&tenant(), &labels("api"), T0, T0 + 100),
        numbered(0, 20)
    );
    ing.flush_all().await.unwrap();
    let seg = &storage.segments(&tenant())[0];
    let blocks = &seg.footer.streams[0].chunks[0].blocks;
    assert_eq!(
        blocks.iter().map(|b| b.meta.count).collect::<Vec<_>>(),
        [6, 6, 6, 2]
    );
    assert_eq!(stored_entries(&storage).await, numbered(0, 20));
}

#[tokio::test]
async fn a_flush_while_a_block_is_being_sealed_stores_its_entries_once() {
    let f = Fixture::new();
    let (ing, storage) = f.open(small_blocks()).await;
    let jobs = cut_without_sealing(&ing, numbered(0, 8));
    assert_eq!(jobs.len(), 1);
    // The flush seals the pending block itself; the push's late block is then dropped.
    ing.flush_all().await.unwrap();
    assert!(ing
        .head_entries(&tenant(), &labels("api"), T0, T0 + 100)
        .is_empty());
    ing.seal(&tenant(), vec![(labels("api"), jobs)]);
    assert!(ing
        .head_entries(&tenant(), &labels("api"), T0, T0 + 100)
        .is_empty());
    ing.flush_all().await.unwrap();
    assert_eq!(stored_entries(&storage).await, numbered(0, 8));
}

/// One change to a day's dedup keys, for the model test of [`Seen`].
#[derive(Clone, Debug)]
enum SeenOp {
    Insert(i64, u64),
    Remove(i64, u64),
    RemoveAll(Vec<u64>),
}

fn seen_op() -> impl proptest::strategy::Strategy<Value = SeenOp> {
    use proptest::prelude::*;
    // Few timestamps and hashes, so that equal keys, equal timestamps and arrivals behind
    // the newest all happen often.
    prop_oneof![
        6 => (0i64..12, 0u64..6).prop_map(|(t, h)| SeenOp::Insert(t, h)),
        1 => (0i64..12, 0u64..6).prop_map(|(t, h)| SeenOp::Remove(t, h)),
        1 => proptest::collection::vec(0u64..6, 0..4).prop_map(SeenOp::RemoveAll),
    ]
}

proptest::proptest! {
    /// `Seen` answers as a plain set of (timestamp, hash) keys does, whatever the order of
    /// arrivals and removals. Hashes here stand for whole keys (as `entry_hash` covers the
    /// timestamp), so a hash is only ever used with one timestamp.
    #[test]
    fn seen_keys_behave_as_a_set(ops in proptest::collection::vec(seen_op(), 0..60)) {
        let mut seen = Seen::default();
        let mut model: std::collections::HashSet<(i64, u64)> = Default::default();
        let key = |t: i64, h: u64| (t, h * 100 + t as u64);
        for op in ops {
            match op {
                SeenOp::Insert(t, h) => {
                    let (t, h) = key(t, h);
                    proptest::prop_assert_eq!(seen.insert(t, h), model.insert((t, h)));
                }
                SeenOp::Remove(t, h) => {
                    let (t, h) = key(t, h);
                    // Only reserved keys are ever removed.
                    if model.remove(&(t, h)) {
                        seen.remove(t, h);
                    }
                }
                SeenOp::RemoveAll(hs) => {
                    let gone: Vec<u64> = model
                        .iter()
                        .filter(|(_, h)| hs.contains(&(h / 100)))
                        .map(|&(_, h)| h)
                        .collect();
                    model.retain(|(_, h)| !gone.contains(h));
                    seen.remove_all(&gone);
                }
            }
            for t in 0..12 {
                for h in 0..6 {
                    let (t, h) = key(t, h);
                    proptest::prop_assert_eq!(seen.contains(t, h), model.contains(&(t, h)));
                }
            }
            proptest::prop_assert_eq!(seen.is_empty(), model.is_empty());
        }
    }
}
