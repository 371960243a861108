//! Hot paths of the shipper: parsing CRI and Docker lines with partial joining,
//! labelling + encoding a batch as protobuf + snappy, and the three together as the reader
//! and client run them (`pipeline/cri_parse_label_encode`): lines/s of that group is the
//! shipper's CPU cost per line, without file I/O and HTTP.

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
                structured_metadata: Default::default(),
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

/// CRI parse + per-line stages + stream labels + grouping into a push request + protobuf
/// and snappy, for 10 000 lines spread over 200 files of 50 pods, as one 1 MiB-ish batch.
fn pipeline(c: &mut Criterion) {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::Arc;

    let labels_cfg: lode_shipper::config::LabelsConfig =
        serde_yaml::from_str("node_name: node-1\nstatic: {cluster: bench}\n")
            .expect("labels config");
    let stages: lode_shipper::config::PipelineConfig =
        serde_yaml::from_str("json_labels: [level]\ndrop: ['GET /healthz']\n")
            .expect("pipeline config");
    let pipeline = lode_shipper::pipeline::Pipeline::new(&labels_cfg, &stages).expect("pipeline");
    let files: Vec<(PathBuf, Vec<u8>)> = (0..200)
        .map(|i| {
            (
                PathBuf::from(format!(
                    "/var/log/pods/shop_web-7d9f8c6b5d-{:05}_uid{i}/c{}/0.log",
                    i / 4,
                    i % 4
                )),
                cri_text(50),
            )
        })
        .collect();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("cri_parse_label_encode", |b| {
        b.iter(|| {
            let mut streams: HashMap<Arc<lode_push::LabelSet>, Vec<lode_push::Entry>> =
                HashMap::new();
            for (path, text) in &files {
                let file_labels = pipeline.file_labels(path);
                let stdout = pipeline
                    .stream_labels(&file_labels, Some(lode_shipper::format::Stream::Stdout));
                let mut p = FileParser::new(256 << 10, true);
                let mut out = Vec::with_capacity(64);
                let mut off = 0u64;
                for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let end = off + line.len() as u64 + 1;
                    p.push_line(line, off, end, &mut out);
                    off = end;
                }
                let Some(labels) = &stdout else { continue };
                for r in out {
                    let (Some(line), Some(ts)) = (r.line, r.timestamp_ns) else {
                        continue;
                    };
                    let target = match pipeline.line_verdict(labels, &line) {
                        lode_shipper::pipeline::LineVerdict::Keep => labels.clone(),
                        lode_shipper::pipeline::LineVerdict::Dropped => continue,
                        lode_shipper::pipeline::LineVerdict::Relabelled(l) => Arc::new(l),
                    };
                    streams.entry(target).or_default().push(lode_push::Entry {
                        timestamp_ns: ts,
                        line,
                        structured_metadata: Default::default(),
                    });
                }
            }
            let req = lode_push::PushRequest {
                streams: streams
                    .into_iter()
                    .map(|(l, entries)| lode_push::PushStream {
                        labels: l.to_string(),
                        entries,
                    })
                    .collect(),
            };
            lode_push::encode_protobuf_snappy(&req).len()
        })
    });
    g.finish();
}

criterion_group!(benches, parse, encode, pipeline);
criterion_main!(benches);
