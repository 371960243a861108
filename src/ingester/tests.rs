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

fn labels(app: &str) -> LabelSet {
    LabelSet::parse(&format!(r#"{{app="{app}"}}"#)).unwrap()
}

fn entry(ts: i64, line: &str) -> Entry {
    Entry {
        timestamp_ns: ts,
        line: line.to_string(),
        structured_metadata: Vec::new(),
    }
}

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
    assert!(out.rejected.is_empty());
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
