//! Hot paths of the shipper: parsing CRI and Docker lines with partial joining, and
//! labelling + encoding a 1 MiB batch as protobuf + snappy.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lode_shipper::format::FileParser;

fn cri_text(lines: usize) -> Vec<u8> {
    let mut s = Vec::new();
    for i in 0..lines {
        s.extend_from_slice(
            format!(
                "2024-05-01T10:00:{:02}.{:09}Z stdout F level=info msg=\"request served\" path=/api/v1/items/{i} status=200 duration_ms={}\n",
                i % 60,
                i,
                i % 997
            )
            .as_bytes(),
        );
    }
    s
}

fn docker_text(lines: usize) -> Vec<u8> {
    let mut s = Vec::new();
    for i in 0..lines {
        s.extend_from_slice(
            format!(
                "{{\"log\":\"level=info msg=\\\"request served\\\" path=/api/v1/items/{i} status=200\\n\",\"stream\":\"stdout\",\"time\":\"2024-05-01T10:00:00.{i:09}Z\"}}\n"
            )
            .as_bytes(),
        );
    }
    s
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for (name, text) in [("cri", cri_text(10_000)), ("docker", docker_text(10_000))] {
        g.throughput(Throughput::Elements(10_000));
        g.bench_with_input(BenchmarkId::from_parameter(name), &text, |b, text| {
            b.iter(|| {
                let mut p = FileParser::new(256 << 10, true);
                let mut out = Vec::with_capacity(10_000);
                let mut off = 0u64;
                for line in text.split(|&b| b == b'\n') {
                    let end = off + line.len() as u64 + 1;
                    p.push_line(line, off, end, &mut out);
                    off = end;
                }
                out.len()
            })
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let text = cri_text(10_000);
    let mut p = FileParser::new(256 << 10, true);
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        p.push_line(line, 0, 0, &mut out);
    }
    let entries: Vec<lode_push::Entry> = out
        .into_iter()
        .filter_map(|r| {
            Some(lode_push::Entry {
                timestamp_ns: r.timestamp_ns?,
                line: r.line?,
                structured_metadata: Vec::new(),
            })
        })
        .collect();
    let req = lode_push::PushRequest {
        streams: vec![lode_push::PushStream {
            labels: r#"{app="web", container="nginx", job="shop/nginx", namespace="shop", pod="web-0", stream="stdout"}"#.into(),
            entries,
        }],
    };
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("protobuf_snappy_10k_lines", |b| {
        b.iter(|| lode_push::encode_protobuf_snappy(&req).len())
    });
    g.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
