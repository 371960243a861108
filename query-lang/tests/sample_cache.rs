//! Metric queries over a source with a sample cache answer exactly what they answer
//! without one: on a cold cache, on a warm one, and over other time ranges and steps
//! reusing the blocks' samples; errors are raised the same way.

#![allow(clippy::unwrap_used)] // test harness: a panic is the failure report

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lode_push::{Entry, LabelSet};
use query_lang::eval::{
    eval, BlockOrigin, EntryBatch, InMemorySource, LogSource, QueryParams, SampleCache,
    SelectRequest, SourceError, StreamData,
};
use query_lang::parse_expr;

const MIN: i64 = 60_000_000_000;
/// Entries per stored block of [`BlockSource`]: blocks straddle every window edge.
const BLOCK: usize = 37;

/// Streams cut into fixed blocks, each handed whole with its origin, as a store of
/// immutable blocks does.
struct BlockSource {
    streams: Vec<(LabelSet, Vec<Arc<Vec<Entry>>>)>,
    cache: SampleCache,
    /// Blocks whose samples the request's extraction has cached are handed as those
    /// samples, unread (`SelectRequest::samples`).
    answers_from_cache: bool,
    /// Blocks handed with their entries.
    read: AtomicUsize,
}

impl LogSource for BlockSource {
    fn select(&self, req: &SelectRequest<'_>) -> Result<Vec<StreamData>, SourceError> {
        let mut out = Vec::new();
        for (s, (labels, blocks)) in self.streams.iter().enumerate() {
            let selected = req
                .matchers
                .iter()
                .all(|m| m.matches(labels.get(&m.name).unwrap_or("")));
            if !selected {
                continue;
            }
            let batches: Vec<_> = blocks
                .iter()
                .enumerate()
                .filter(|(_, b)| {
                    b.first().is_some_and(|e| e.timestamp_ns < req.end_ns)
                        && b.last().is_some_and(|e| e.timestamp_ns >= req.start_ns)
                })
                .map(|(i, b)| {
                    let origin = BlockOrigin {
                        object: s as u128,
                        offset: i as u64,
                    };
                    let cached = req
                        .samples
                        .filter(|_| self.answers_from_cache)
                        .and_then(|key| self.cache.lookup(origin, key));
                    if let Some(samples) = cached {
                        return Ok(EntryBatch::from_samples(origin, samples));
                    }
                    self.read.fetch_add(1, Ordering::Relaxed);
                    Ok(EntryBatch {
                        origin: Some(origin),
                        ..EntryBatch::new(b.clone())
                    })
                })
                .collect();
            out.push(StreamData {
                labels: labels.clone(),
                batches: Box::new(batches.into_iter()),
                counts: Vec::new(),
            });
        }
        Ok(out)
    }

    fn sample_cache(&self) -> Option<&SampleCache> {
        Some(&self.cache)
    }
}

/// JSON, logfmt and plain lines with `detected_level` metadata, some malformed, one
/// every 10 s for two hours in each of three streams.
fn streams() -> Vec<(LabelSet, Vec<Entry>)> {
    let levels = ["info", "warn", "error", "debug"];
    [("a", "prod"), ("b", "prod"), ("c", "dev")]
        .iter()
        .enumerate()
        .map(|(s, (pod, ns))| {
            let labels =
                LabelSet::from_pairs([("app", "x"), ("namespace", *ns), ("pod", *pod)]).unwrap();
            let entries = (0..720usize)
                .map(|i| {
                    let level = levels[(i * 7 + pod.len()) % 4];
                    let line = match i % 6 {
                        0 => format!("level={level} status={} took={}ms", 200 + i % 4 * 100, i),
                        1 | 3 => format!(
                            r#"{{"level":"{level}","path":"/p{}","status":{},"size":{i}}}"#,
                            i % 3,
                            200 + i % 5 * 100
                        ),
                        2 => format!(r#"{{"path":"/q","level":"{level}","bad":"#),
                        4 => format!(r#"{{"path":"/r","size":"{}kb"}}"#, i % 9),
                        _ => format!("plain {level} line {i}"),
                    };
                    Entry {
                        // Distinct across streams: samples of one series then add up in
                        // one order, whichever thread read which stream.
                        timestamp_ns: i as i64 * 10_000_000_000 + (i as i64 % 7) * 10 + s as i64,
                        line,
                        structured_metadata: vec![("detected_level".into(), level.into())].into(),
                    }
                })
                .collect();
            (labels, entries)
        })
        .collect()
}

fn sources() -> (InMemorySource, BlockSource) {
    let mut plain = InMemorySource::new();
    let mut blocks = BlockSource {
        streams: Vec::new(),
        cache: SampleCache::new(64 << 20),
        answers_from_cache: false,
        read: AtomicUsize::new(0),
    };
    for (labels, entries) in streams() {
        plain.push(labels.clone(), entries.clone());
        let cut = entries
            .chunks(BLOCK)
            .map(|c| Arc::new(c.to_vec()))
            .collect();
        blocks.streams.push((labels, cut));
    }
    (plain, blocks)
}

fn answer(source: &dyn LogSource, query: &str, params: &QueryParams) -> String {
    let expr = parse_expr(query).unwrap();
    match eval(&expr, params, source) {
        Ok(r) => serde_json::to_string(&r).unwrap(),
        // Which series an error names depends on which thread met it first.
        Err(e) => {
            let e = e.to_string();
            format!("error: {}", e.split(" for series").next().unwrap_or(&e))
        }
    }
}

const QUERIES: &[&str] = &[
    r#"sum by (level) (count_over_time({app="x"} | logfmt [5m]))"#,
    r#"sum(rate({app="x"} | json | status >= 500 [5m])) / sum(rate({app="x"}[5m]))"#,
    r#"quantile_over_time(0.9, {app="x"} | json | unwrap size [5m]) by (path)"#,
    r#"quantile_over_time(0.9, {app="x"} | json | unwrap size | __error__="" [5m]) by (path)"#,
    r#"sum by (pod) (bytes_over_time({app="x"} |= "level" [2m]))"#,
    r#"count_over_time({app="x"} | json [1m])"#,
    r#"sum by (__error__) (count_over_time({app="x"} | json [5m]))"#,
    r#"avg_over_time({app="x"} | logfmt | unwrap took | __error__="" [3m]) by (namespace)"#,
    r#"max_over_time({app="x"} | logfmt | unwrap duration(took) [10m]) by (level)"#,
    r#"sum by (detected_level) (count_over_time({namespace="prod"} |~ "warn|error" [5m]))"#,
];

#[test]
fn cached_samples_answer_as_the_lines_do() {
    let (plain, blocks) = sources();
    let ranges = [
        QueryParams::range(0, 120 * MIN, MIN),
        QueryParams::range(17 * MIN + 3, 61 * MIN, 30_000_000_000),
        QueryParams::range(0, 120 * MIN, MIN),
        QueryParams::instant(47 * MIN + 5),
    ];
    for query in QUERIES {
        for params in &ranges {
            let want = answer(&plain, query, params);
            let got = answer(&blocks, query, params);
            assert_eq!(got, want, "{query} over {params:?}");
        }
    }
    assert!(!blocks.cache.is_empty(), "nothing was cached");
}

#[test]
fn an_error_is_raised_on_a_warm_cache_too() {
    let (plain, blocks) = sources();
    let failing = r#"sum(quantile_over_time(0.5, {app="x"} | json | unwrap size [5m]))"#;
    let params = QueryParams::range(0, 120 * MIN, MIN);
    let want = answer(&plain, failing, &params);
    assert!(want.starts_with("error:"), "{want}");
    // Warm the blocks that raise no error, then ask again.
    assert_eq!(answer(&blocks, failing, &params), want);
    assert_eq!(answer(&blocks, failing, &params), want);
}

#[test]
fn a_zero_budget_source_answers_the_same() {
    let (plain, mut blocks) = sources();
    blocks.cache = SampleCache::new(0);
    let params = QueryParams::range(0, 120 * MIN, MIN);
    for query in QUERIES {
        assert_eq!(
            answer(&blocks, query, &params),
            answer(&plain, query, &params)
        );
    }
    assert!(blocks.cache.is_empty());
}

#[test]
fn a_store_handing_cached_samples_unread_answers_the_same_and_reads_each_block_once() {
    let (plain, mut blocks) = sources();
    blocks.answers_from_cache = true;
    let ranges = [
        QueryParams::range(0, 120 * MIN, MIN),
        QueryParams::range(17 * MIN + 3, 61 * MIN, 30_000_000_000),
        QueryParams::instant(47 * MIN + 5),
    ];
    for query in QUERIES {
        for params in &ranges {
            let want = answer(&plain, query, params);
            assert_eq!(
                answer(&blocks, query, params),
                want,
                "{query} over {params:?}"
            );
            assert_eq!(answer(&blocks, query, params), want, "{query} warm");
        }
    }
    // A query whose lines raise no error: once its blocks are cached, none is read.
    let query =
        r#"quantile_over_time(0.9, {app="x"} | json | unwrap size | __error__="" [5m]) by (path)"#;
    let params = QueryParams::range(0, 120 * MIN, MIN);
    answer(&blocks, query, &params);
    let before = blocks.read.load(Ordering::Relaxed);
    answer(&blocks, query, &params);
    assert_eq!(
        blocks.read.load(Ordering::Relaxed),
        before,
        "a cached block was read"
    );
}
