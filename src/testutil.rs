//! Helpers shared by the crate's unit tests: entries, one-label stream label sets and a
//! count of the objects a filesystem store holds. Test-only; nothing here ships.

use lode_push::{Entry, LabelSet};

/// An entry without structured metadata.
pub(crate) fn entry(ts: i64, line: &str) -> Entry {
    Entry {
        timestamp_ns: ts,
        line: line.to_string(),
        structured_metadata: Vec::new(),
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
