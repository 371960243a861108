//! Helpers shared by the crate's unit tests: entries, one-label stream label sets and a
//! count of the objects a filesystem store holds, and a store with an ingester in a
//! directory. Test-only; nothing here ships.

use lode_push::{Entry, LabelSet};

/// An entry without structured metadata.
pub(crate) fn entry(ts: i64, line: &str) -> Entry {
    Entry {
        timestamp_ns: ts,
        line: line.to_string(),
        structured_metadata: Default::default(),
    }
}

/// The label set `{app="<app>"}`.
pub(crate) fn app_labels(app: &str) -> LabelSet {
    LabelSet::parse(&format!(r#"{{app="{app}"}}"#)).unwrap()
}

/// Files below `dir`, at any depth (segment objects under a store's `chunks/`).
pub(crate) fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    count_files(&e.path())
                } else {
                    1
                }
            })
            .sum()
        })
        .unwrap_or(0)
}

/// A filesystem store under `dir/chunks`, caches at their defaults but the sample cache
/// at `sample_cache_mb`.
pub(crate) fn store_config(
    dir: &std::path::Path,
    sample_cache_mb: usize,
) -> crate::storage::StorageConfig {
    crate::storage::StorageConfig {
        filesystem: crate::storage::FilesystemConfig {
            directory: dir.join("chunks"),
        },
        sample_cache_max_size_mb: sample_cache_mb,
        ..crate::storage::StorageConfig::default()
    }
}

/// Storage under `dir` (default caches) on `clock`, and an ingester over it with the
/// default config and its WAL in `dir/wal`.
pub(crate) async fn open_store(
    dir: &std::path::Path,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
) -> (
    std::sync::Arc<crate::storage::Storage>,
    std::sync::Arc<crate::ingester::Ingester>,
) {
    let cfg = store_config(dir, crate::storage::DEFAULT_SAMPLE_CACHE_MB);
    let storage = crate::storage::Storage::open(&cfg, clock).await.unwrap();
    let ingester = crate::ingester::Ingester::open(
        crate::ingester::IngesterConfig::default(),
        dir.join("wal"),
        storage.clone(),
    )
    .await
    .unwrap();
    (storage, ingester)
}
