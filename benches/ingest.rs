//! Per-line ingest work outside storage: level detection (`detected_level`) on the three
//! line shapes of `lode-loadgen` (JSON, logfmt, access log with no level field) and the
//! protobuf push decode. Numbers and the command are in docs/benchmarks.md (`## ingest`).
//!
//! Run: `cargo bench -p lode --bench ingest`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lode::distributor::discovery::detect_from_line;
use lode_push::{encode_protobuf, Entry, PushRequest, PushStream};

/// `n` lines of one shape, with varying fields as the load generator writes them.
fn lines(shape: &str, n: usize) -> Vec<String> {
    const LEVELS: [&str; 4] = ["info", "debug", "warn", "error"];
    (0..n)
        .map(|i| {
            let level = LEVELS[i % 4];
            let status = [200, 201, 404, 500][i % 4];
            match shape {
                "json" => format!(
                    r#"{{"ts":"2026-01-01T12:00:{:02}.123Z","level":"{level}","msg":"request handled","method":"GET","path":"/api/v1/items/{i}","status":{status},"duration_ms":{},"trace_id":"{:016x}","user_id":"u{}"}}"#,
                    i % 60,
                    i % 2000,
                    i * 7919,
                    i % 50_000
                ),
                "logfmt" => format!(
                    r#"ts=2026-01-01T12:00:{:02}.123Z level={level} msg="request handled" method=GET path=/api/v1/items/{i} status={status} duration={}ms trace_id={:016x} user=u{}"#,
                    i % 60,
                    i % 2000,
                    i * 7919,
                    i % 50_000
                ),
                _ => format!(
                    r#"10.{}.{}.{} - - [01/Jan/2026:12:00:{:02} +0000] "GET /api/v1/items/{i} HTTP/1.1" {status} {} "-" "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0" 0.{:03}"#,
                    i % 255,
                    i * 7 % 255,
                    i * 13 % 255,
                    i % 60,
                    100 + i % 60_000,
                    i % 1000
                ),
            }
        })
        .collect()
}

fn level_detection(c: &mut Criterion) {
    let mut g = c.benchmark_group("detect_level");
    for shape in ["json", "logfmt", "access"] {
        let lines = lines(shape, 2000);
        g.throughput(Throughput::Bytes(
            lines.iter().map(|l| l.len() as u64).sum(),
        ));
        g.bench_function(shape, |b| {
            b.iter(|| {
                for l in &lines {
                    black_box(detect_from_line(black_box(l)));
                }
            })
        });
    }
    g.finish();
}

fn push_decode(c: &mut Criterion) {
    let streams = ["json", "logfmt", "access"]
        .iter()
        .enumerate()
        .map(|(s, shape)| PushStream {
            labels: format!(r#"{{app="{shape}", namespace="prod", pod="p-{s}"}}"#),
            entries: lines(shape, 2500)
                .into_iter()
                .enumerate()
                .map(|(i, line)| Entry {
                    timestamp_ns: 1_767_268_800_000_000_000 + i as i64 * 1_000_000,
                    line,
                    structured_metadata: Default::default(),
                })
                .collect(),
        })
        .collect();
    let body = encode_protobuf(&PushRequest { streams });
    let mut g = c.benchmark_group("push_decode");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("protobuf_7500_lines", |b| {
        b.iter(|| black_box(lode_push::decode_protobuf(black_box(&body))))
    });
    g.finish();
}

criterion_group!(benches, level_detection, push_decode);
criterion_main!(benches);
