//! Hot paths of the query engine: a line filter, the `json` and `logfmt` parsers (each
//! through a compiled pipeline, per line), and a whole metric range query evaluated over
//! in-memory streams. Run with `cargo bench -p query-lang --bench eval`; numbers go to
//! `docs/benchmarks.md`. Pipeline throughput is in bytes of raw lines (the query-lang
//! acceptance targets are MB/s per core); metric throughput in lines.
//!
//! On a shared machine wall time mostly measures the neighbours: with
//! `LODE_BENCH_CLOCK=cpu` every bench is timed by the on-CPU time of the benchmarking
//! thread (`/proc/thread-self/schedstat`, nanoseconds) instead. Metric queries fan out to
//! one thread per core, so time them under `taskset -c 0`, which makes them run on the
//! calling thread and gives the one-core figure.

#![allow(clippy::unwrap_used)] // bench setup: a panic is the failure report

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Bencher, Criterion, Throughput};
use lode_push::{Entry, LabelSet};
use query_lang::eval::{eval, InMemorySource, QueryParams};
use query_lang::log::{LabelsBuilder, Pipeline};
use query_lang::{parse_expr, Expr};

const LINES: usize = 10_000;
const START_NS: i64 = 1_767_225_600_000_000_000;
const HOUR_NS: i64 = 3_600_000_000_000;

const LEVELS: [&str; 4] = ["info", "debug", "warn", "error"];
const PATHS: [&str; 3] = ["/api/tasks", "/api/users", "/healthz"];

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Times `routine` by wall clock, or by this thread's CPU time under
/// `LODE_BENCH_CLOCK=cpu`.
fn time<R>(b: &mut Bencher<'_>, mut routine: impl FnMut() -> R) {
    let cpu = std::env::var("LODE_BENCH_CLOCK").is_ok_and(|v| v == "cpu");
    b.iter_custom(|iters| {
        let (wall, t0) = (Instant::now(), if cpu { thread_cpu_ns() } else { 0 });
        for _ in 0..iters {
            black_box(routine());
        }
        if cpu {
            Duration::from_nanos(thread_cpu_ns() - t0)
        } else {
            wall.elapsed()
        }
    })
}

fn json_line(i: usize) -> String {
    format!(
        r#"{{"level":"{}","msg":"request {}","taskId":"task-{:03}","status":{},"latency_ms":{},"http":{{"method":"GET","path":"{}"}}}}"#,
        LEVELS[i % 4],
        if i % 17 == 0 {
            "failed: upstream timeout"
        } else {
            "completed"
        },
        i % 60,
        200 + (i % 5) * 100,
        (i * 37) % 4000,
        PATHS[i % 3],
    )
}

fn logfmt_line(i: usize) -> String {
    format!(
        r#"level={} method=GET path={} status={} duration={}ms client_ip=10.0.{}.{} msg="request {}""#,
        LEVELS[i % 4],
        PATHS[i % 3],
        200 + (i % 5) * 100,
        (i * 37) % 4000,
        i % 4,
        i % 250,
        if i % 17 == 0 { "timed out" } else { "served" },
    )
}

fn pipeline(query: &str) -> Pipeline {
    match parse_expr(query).unwrap() {
        Expr::Log(sel) => Pipeline::new(&sel.pipeline).unwrap(),
        Expr::Metric(_) | Expr::Variants(_) => panic!("{query} is not a log query"),
    }
}

fn bench_pipeline(c: &mut Criterion, name: &str, query: &str, lines: &[String]) {
    let stream = LabelSet::from_pairs([("app", "bench")]).unwrap();
    let p = pipeline(query);
    let mut group = c.benchmark_group("pipeline");
    let bytes: usize = lines.iter().map(String::len).sum();
    group.throughput(Throughput::BytesDecimal(bytes as u64));
    group.bench_function(name, |b| {
        time(b, || {
            let mut lb = LabelsBuilder::new(&stream);
            let mut kept = 0usize;
            for (i, line) in lines.iter().enumerate() {
                lb.reset(&[]);
                if p.process(i as i64, line, &mut lb).is_some() {
                    kept += 1;
                }
            }
            black_box(kept)
        })
    });
    group.finish();
}

fn pipelines(c: &mut Criterion) {
    let json: Vec<String> = (0..LINES).map(json_line).collect();
    let logfmt: Vec<String> = (0..LINES).map(logfmt_line).collect();
    bench_pipeline(
        c,
        "line_filter_contains",
        r#"{app="bench"} |= "timeout""#,
        &json,
    );
    bench_pipeline(
        c,
        "line_filter_regex",
        r#"{app="bench"} |~ "status\":5[0-9]{2}""#,
        &json,
    );
    bench_pipeline(c, "json", r#"{app="bench"} | json"#, &json);
    bench_pipeline(
        c,
        "json_filter",
        r#"{app="bench"} | json | status >= 500"#,
        &json,
    );
    bench_pipeline(c, "logfmt", r#"{app="bench"} | logfmt"#, &logfmt);
    bench_pipeline(
        c,
        "logfmt_filter",
        r#"{app="bench"} | logfmt | duration > 2s"#,
        &logfmt,
    );
}

/// Four streams of `LINES` JSON lines each, spread over one hour.
fn source() -> InMemorySource {
    let mut src = InMemorySource::new();
    for pod in ["a", "b", "c", "d"] {
        let labels = LabelSet::from_pairs([("app", "api"), ("pod", pod)]).unwrap();
        let step = HOUR_NS / LINES as i64;
        src.push(
            labels,
            (0..LINES).map(|i| Entry {
                timestamp_ns: START_NS + i as i64 * step,
                line: json_line(i),
                structured_metadata: Default::default(),
            }),
        );
    }
    src
}

fn metric_queries(c: &mut Criterion) {
    let src = source();
    let params = QueryParams::range(START_NS, START_NS + HOUR_NS, 60_000_000_000);
    let mut group = c.benchmark_group("metric");
    group.throughput(Throughput::Elements(4 * LINES as u64));
    for (name, query) in [
        (
            "count_over_time_filter",
            r#"sum(count_over_time({app="api"} |= "timeout" [5m]))"#,
        ),
        (
            "json_count_by_level",
            r#"sum by (level) (count_over_time({app="api"} | json [5m]))"#,
        ),
        (
            "json_unwrap_quantile",
            r#"quantile_over_time(0.99, {app="api"} | json | unwrap latency_ms [5m]) by (pod)"#,
        ),
    ] {
        let expr = parse_expr(query).unwrap();
        group.bench_function(name, |b| time(b, || eval(&expr, &params, &src).unwrap()));
    }
    group.finish();
}

/// Streams for the one-million-sample rate: 4 apps × 5 pods, 50,000 lines each over one
/// hour. Lines are short; without a pipeline their text is never read.
fn million_samples() -> InMemorySource {
    const PER_STREAM: usize = 50_000;
    let mut src = InMemorySource::new();
    for app in ["api", "gateway", "worker", "web"] {
        for pod in 0..5 {
            let pod = format!("{app}-{pod}");
            let labels =
                LabelSet::from_pairs([("app", app), ("env", "prod"), ("pod", pod.as_str())])
                    .unwrap();
            let step = HOUR_NS / PER_STREAM as i64;
            src.push(
                labels,
                (0..PER_STREAM).map(|i| Entry {
                    timestamp_ns: START_NS + i as i64 * step,
                    line: format!("GET {} {}", PATHS[i % 3], 200 + (i % 5) * 100),
                    structured_metadata: Default::default(),
                }),
            );
        }
    }
    src
}

/// `sum by (app) (rate(...[5m]))` over 1,000,000 samples, step 60s: the acceptance bench
/// of a plain metric query (run under `taskset -c 0` for the one-core figure).
fn metric_million(c: &mut Criterion) {
    let src = million_samples();
    let params = QueryParams::range(START_NS, START_NS + HOUR_NS, 60_000_000_000);
    let expr = parse_expr(r#"sum by (app) (rate({env="prod"}[5m]))"#).unwrap();
    let mut group = c.benchmark_group("metric");
    group.throughput(Throughput::Elements(1_000_000));
    group.bench_function("sum_rate_by_app_1m_samples", |b| {
        time(b, || eval(&expr, &params, &src).unwrap())
    });
    group.finish();
}

/// A small deterministic generator (xorshift64*) for the server-like lines.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

const SERVER_PATHS: [&str; 8] = [
    "/api/v1/users",
    "/api/v1/orders",
    "/api/v1/cart",
    "/healthz",
    "/api/v1/search?q=shoes",
    "/login",
    "/static/app.js",
    "/api/v1/payments/charge",
];
const SERVER_MESSAGES: [&str; 6] = [
    "request completed",
    "cache miss, fetching from upstream",
    "user session refreshed",
    "retrying upstream call",
    "slow query detected",
    "connection pool exhausted",
];

/// A line as `lode-loadgen` writes it for a JSON, logfmt or access-log app, and its level.
fn server_line(rng: &mut Rng, format: &str, error_rate: u64, ts_ns: i64) -> (String, &'static str) {
    let failed = rng.below(1000) < error_rate;
    let status = if failed {
        [500, 502, 503, 504][rng.below(4) as usize]
    } else {
        [200, 200, 200, 201, 204, 301, 404][rng.below(7) as usize]
    };
    let method = rng.pick(&["GET", "GET", "POST", "PUT"]);
    let path = rng.pick(&SERVER_PATHS);
    let ms = 1 + rng.below(1999);
    let lvl = match (failed, rng.below(100)) {
        (true, _) => "error",
        (false, 0..=69) => "info",
        (false, 70..=84) => "debug",
        (false, 85..=96) => "warn",
        _ => "error",
    };
    let msg = rng.pick(&SERVER_MESSAGES);
    let trace = rng.below(u64::MAX);
    let user = 1 + rng.below(49_999);
    let secs = ts_ns / 1_000_000_000;
    let ts = format!(
        "2026-01-01T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        ts_ns / 1_000_000 % 1000
    );
    let line = match format {
        "json" => format!(
            r#"{{"ts":"{ts}","level":"{lvl}","msg":"{msg}","method":"{method}","path":"{path}","status":{status},"duration_ms":{ms},"trace_id":"{trace:016x}","user_id":"u{user}"}}"#
        ),
        "logfmt" => format!(
            r#"ts={ts} level={lvl} msg="{msg}" method={method} path={path} status={status} duration={ms}ms trace_id={trace:016x} user=u{user}"#
        ),
        _ => format!(
            r#"10.{}.{}.{} - - [01/Jan/2026:{:02}:{:02}:{:02} +0000] "{method} {path} HTTP/1.1" {status} {} "-" "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0" {:.3}"#,
            rng.below(255),
            rng.below(255),
            rng.below(255),
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60,
            100 + rng.below(59_900),
            ms as f64 / 1000.0,
        ),
    };
    (line, lvl)
}

/// Lines per stream of the server-like source.
const SERVER_LINES: usize = 5_000;

/// Streams shaped as the server holds `lode-loadgen`'s data: three apps (JSON, logfmt,
/// access log) × three namespaces × three pods, `SERVER_LINES` lines each over six hours,
/// every line with the `detected_level` structured metadata the distributor adds.
fn server_source() -> InMemorySource {
    let mut src = InMemorySource::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (app, format, error_rate) in [
        ("api", "json", 20),
        ("payments", "logfmt", 10),
        ("web", "access", 10),
    ] {
        for ns in ["prod", "staging", "dev"] {
            for pod in 0..3 {
                let pod = format!("{app}-7d9f{pod}c-x{pod}q");
                let job = format!("{ns}/{app}");
                let labels = LabelSet::from_pairs([
                    ("app", app),
                    ("container", app),
                    ("job", job.as_str()),
                    ("namespace", ns),
                    ("pod", pod.as_str()),
                    ("service_name", app),
                ])
                .unwrap();
                let step = 6 * HOUR_NS / SERVER_LINES as i64;
                let entries: Vec<Entry> = (0..SERVER_LINES)
                    .map(|i| {
                        let ts = START_NS + i as i64 * step;
                        let (line, lvl) = server_line(&mut rng, format, error_rate, ts);
                        Entry {
                            timestamp_ns: ts,
                            line,
                            structured_metadata: vec![(
                                "detected_level".to_owned(),
                                lvl.to_owned(),
                            )]
                            .into(),
                        }
                    })
                    .collect();
                src.push(labels, entries);
            }
        }
    }
    src
}

/// The baseline query classes of the end-to-end benchmark (`lode-querybench`), step 60s
/// over six hours, on the server-like source.
fn metric_server(c: &mut Criterion) {
    let src = server_source();
    let params = QueryParams::range(START_NS, START_NS + 6 * HOUR_NS, 60_000_000_000);
    let mut group = c.benchmark_group("server");
    let app_lines = 9 * SERVER_LINES as u64;
    for (name, query, lines) in [
        (
            "logfmt_count_by_level",
            r#"sum by (level) (count_over_time({app="payments"} | logfmt [5m]))"#,
            app_lines,
        ),
        (
            "json_unwrap_quantile_by_path",
            r#"quantile_over_time(0.99, {app="api"} | json | unwrap duration_ms [5m]) by (path)"#,
            app_lines,
        ),
        (
            "json_error_ratio",
            r#"sum(rate({app="api"} | json | status >= 500 [5m])) / sum(rate({app="api"}[5m]))"#,
            2 * app_lines,
        ),
        (
            "rate_contains_by_app",
            r#"sum by (app) (rate({namespace="prod"} |= "error" [5m]))"#,
            app_lines,
        ),
    ] {
        let expr = parse_expr(query).unwrap();
        group.throughput(Throughput::Elements(lines));
        group.bench_function(name, |b| time(b, || eval(&expr, &params, &src).unwrap()));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = pipelines, metric_queries, metric_million, metric_server
}
criterion_main!(benches);
