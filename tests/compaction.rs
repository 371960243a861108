//! Segment compaction seen from outside: data pushed in several flushes is merged into
//! fewer, smaller segment files by the compactor loop, and every query answers exactly as
//! before — also after a restart, and after a crash that left the merged segments behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{now_ns, TestServer};
use lode_push::{Entry, PushRequest, PushStream};
use serde_json::Value;

/// Writes segments but never merges them.
const NO_COMPACTION: &str = "compactor:\n  segment_compaction_enabled: false\n";

/// Merges as soon as two segments of a day exist, a pass every 200ms.
const COMPACTION: &str = "\
compactor:
  compaction_interval: 200ms
  segment_compaction_min_segments: 2
";

const FLUSHES: i64 = 5;
const PER_FLUSH: i64 = 60;

/// The stream entries of push number `flush`: three apps, interleaved in time with the
/// other pushes (each push adds timestamps between those of the previous ones), some
/// with structured metadata.
fn batch(base: i64, flush: i64) -> PushRequest {
    let streams = ["api", "web", "db"]
        .iter()
        .map(|app| PushStream {
            labels: format!(r#"{{app="{app}", env="prod"}}"#),
            entries: (0..PER_FLUSH)
                .map(|i| {
                    let ts = base + (i * FLUSHES + flush) * 1_000_000_000;
                    let level = ["info", "warn", "error"][(i % 3) as usize];
                    Entry {
                        timestamp_ns: ts,
                        line: format!(
                            "level={level} app={app} msg=\"request {i} of push {flush}\" took={}ms",
                            (i * 37) % 1000
                        ),
                        structured_metadata: if i % 4 == 0 {
                            vec![("trace_id".to_string(), format!("t{}", i % 8))].into()
                        } else {
                            Default::default()
                        },
                    }
                })
                .collect(),
        })
        .collect();
    PushRequest { streams }
}

/// The first timestamp of the pushes: the start of the hour an hour ago, so the five
/// minutes of entries fall in one UTC day (one segment per flush) whatever the time of
/// day. `now - 1h` itself failed the tests run between 00:55 and 01:00 UTC, when the
/// entries straddled midnight and every flush wrote two segments.
fn one_day_base() -> i64 {
    const HOUR_NS: i64 = 3_600_000_000_000;
    (now_ns() - HOUR_NS) / HOUR_NS * HOUR_NS
}

/// Pushes [`FLUSHES`] batches, each followed by `POST /flush` (one segment each).
async fn push_in_flushes(s: &TestServer, base: i64) {
    for flush in 0..FLUSHES {
        let (status, body) = s.push(None, &batch(base, flush)).await;
        assert_eq!(status, 204, "{body}");
        let (status, body) = s.post_flush().await;
        assert!(status < 300, "flush: {status} {body}");
    }
}

/// `(number, total bytes)` of segment files under the data directory.
fn segment_files(dir: &Path) -> (usize, u64) {
    let mut out = (0, 0);
    for p in list_segments(dir) {
        out.0 += 1;
        out.1 += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    }
    out
}

fn list_segments(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(d) = std::fs::read_dir(p) {
            for e in d.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|x| x == "seg") {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("chunks"), &mut out);
    out.sort();
    out
}

/// The `data` of a GET on `path` with `params`, which must answer 200.
async fn data(s: &TestServer, path: &str, params: &[(&str, String)]) -> Value {
    let r = s
        .client
        .get(format!("{}{path}", s.url))
        .query(params)
        .send()
        .await
        .expect("query");
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("json answer");
    assert_eq!(status, 200, "{path} {params:?}: {body}");
    let mut data = body["data"].clone();
    // Statistics say how much was read, which compaction changes by design.
    if let Some(d) = data.as_object_mut() {
        d.remove("stats");
    }
    data
}

/// Everything a user may ask about the pushed data, in a comparable form.
async fn answers(s: &TestServer, base: i64) -> Vec<Value> {
    let start = (base - 60_000_000_000).to_string();
    let end = (base + (PER_FLUSH * FLUSHES + 60) * 1_000_000_000).to_string();
    let range = |q: &str, extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut p = vec![
            ("query", q.to_string()),
            ("start", start.clone()),
            ("end", end.clone()),
            ("limit", "5000".to_string()),
        ];
        p.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        p
    };
    let mut out = Vec::new();
    for (q, extra) in [
        (r#"{env="prod"}"#, vec![("direction", "forward")]),
        (r#"{env="prod"}"#, vec![("direction", "backward")]),
        (r#"{app="api"} |= "error""#, vec![]),
        (r#"{app="web"} | logfmt | took > 500"#, vec![]),
        (
            r#"sum by (app) (count_over_time({env="prod"}[1m]))"#,
            vec![("step", "30")],
        ),
        (
            r#"sum by (trace_id) (count_over_time({env="prod"}[5m]))"#,
            vec![("step", "60")],
        ),
        (r#"bytes_over_time({app="db"}[10m])"#, vec![("step", "120")]),
    ] {
        out.push(data(s, "/loki/api/v1/query_range", &range(q, &extra)).await);
    }
    let instant = vec![
        (
            "query",
            r#"sum by (app) (count_over_time({env="prod"}[1h]))"#.to_string(),
        ),
        ("time", end.clone()),
    ];
    out.push(data(s, "/loki/api/v1/query", &instant).await);
    let window = vec![("start", start.clone()), ("end", end.clone())];
    let mut series = window.clone();
    series.push(("match[]", r#"{env="prod"}"#.to_string()));
    out.push(data(s, "/loki/api/v1/series", &series).await);
    out.push(data(s, "/loki/api/v1/labels", &window).await);
    out.push(data(s, "/loki/api/v1/label/app/values", &window).await);
    out
}

/// The value of an unlabelled-or-tenant counter in the `/metrics` exposition.
async fn counter(s: &TestServer, name: &str) -> f64 {
    s.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (bounded, so a broken build fails instead of hanging) until a merge finished.
async fn wait_for_compaction(s: &TestServer) {
    for _ in 0..300 {
        if counter(s, "lode_compactor_written_segments_total").await >= 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no compaction within 30s; metrics:\n{}", s.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_segments_and_every_query_answers_as_before_also_after_restart() {
    let base = one_day_base();
    let s = TestServer::start(NO_COMPACTION).await;
    push_in_flushes(&s, base).await;
    let before = answers(&s, base).await;
    let lines = before[0]["result"]
        .as_array()
        .map(|streams| {
            streams
                .iter()
                .map(|st| st["values"].as_array().map_or(0, Vec::len))
                .sum::<usize>()
        })
        .unwrap_or(0);
    assert_eq!(
        lines as i64,
        3 * FLUSHES * PER_FLUSH,
        "every pushed line is there"
    );
    let (files_before, bytes_before) = segment_files(s.data_dir());
    assert_eq!(files_before, FLUSHES as usize);
    let dir = s.stop().await;

    let s = TestServer::restart(COMPACTION, dir).await;
    wait_for_compaction(&s).await;
    let (files_after, bytes_after) = segment_files(s.data_dir());
    assert_eq!(files_after, 1, "five segments merged into one");
    assert!(
        bytes_after < bytes_before,
        "{bytes_after} bytes at rest after, {bytes_before} before"
    );
    assert!(counter(&s, "lode_compactor_compacted_segments_total").await >= 5.0);
    assert!(counter(&s, "lode_compactor_compacted_bytes_total").await >= bytes_before as f64);
    let after = answers(&s, base).await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(b, a, "answer {i} changed by compaction");
    }
    let dir = s.stop().await;

    let s = TestServer::restart(COMPACTION, dir).await;
    assert_eq!(answers(&s, base).await, before, "after a restart");
    assert_eq!(segment_files(s.data_dir()).0, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_between_merge_and_delete_only_the_merged_segment_is_read() {
    let base = one_day_base();
    let s = TestServer::start(NO_COMPACTION).await;
    push_in_flushes(&s, base).await;
    let before = answers(&s, base).await;
    let dir = s.stop().await;
    // Keep the segments a crash would have left behind.
    let old: Vec<(PathBuf, Vec<u8>)> = list_segments(dir.path())
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read segment");
            (p, bytes)
        })
        .collect();
    assert_eq!(old.len(), FLUSHES as usize);

    let s = TestServer::restart(COMPACTION, dir).await;
    wait_for_compaction(&s).await;
    let dir = s.stop().await;
    let merged = list_segments(dir.path());
    assert_eq!(merged.len(), 1);
    // The crash: the merged segment is written, the old ones not yet deleted.
    for (p, bytes) in &old {
        std::fs::write(p, bytes).expect("restore old segment");
    }
    assert_eq!(segment_files(dir.path()).0, FLUSHES as usize + 1);

    let s = TestServer::restart(NO_COMPACTION, dir).await;
    assert_eq!(
        list_segments(s.data_dir()),
        merged,
        "startup deleted the segments the merged one replaces"
    );
    let after = answers(&s, base).await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(b, a, "answer {i}: no entry lost or doubled");
    }
    s.stop().await;
}
