//! Storage hot paths: WAL append (with and without fsync), head block seal and decode,
//! and segment encode. Numbers and the command that produced them are in
//! docs/benchmarks.md (`## storage`).
//!
//! Run: `cargo bench -p lode --bench storage`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lode::chunk::{decode_block, SealedBlock, ZSTD_LEVEL};
use lode::clock::Day;
use lode::storage::segment::{self, FlushChunk};
use lode::wal::{encode_record, FsyncMode, Wal, WalConfig};
use lode::TenantId;
use lode_push::{Entry, LabelSet};

/// 2026-01-01T12:00:00Z.
const T0: i64 = 1_767_268_800_000_000_000;

/// Access-log-like lines: mostly repetitive, with varying numbers, as real logs are.
fn entries(n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            timestamp_ns: T0 + i as i64 * 1_000_000,
            line: format!(
                "level=info ts=2026-01-01T12:00:{:02}Z caller=handler.go:{} method=GET path=/api/v1/items/{} status={} duration={}ms",
                i % 60,
                100 + i % 37,
                i * 7919 % 100_000,
                if i % 50 == 0 { 500 } else { 200 },
                i % 250
            ),
            structured_metadata: Default::default(),
        })
        .collect()
}

fn raw_bytes(e: &[Entry]) -> u64 {
    e.iter().map(|e| e.line.len() as u64).sum()
}

/// One ~256 KiB head block's worth of entries, the default `chunk_block_size`.
fn block_entries() -> Vec<Entry> {
    let mut out = entries(4000);
    let mut total = 0;
    out.retain(|e| {
        total += e.line.len();
        total <= 262_144
    });
    out
}

fn wal_append(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let tenant = TenantId::new("bench").expect("tenant");
    let labels = LabelSet::parse(r#"{app="api", env="prod"}"#).expect("labels");
    let batch = entries(100);
    let mut framed = Vec::new();
    encode_record(&mut framed, &tenant, &labels, &batch).expect("encode");
    let mut group = c.benchmark_group("wal_append_100_entries");
    group.throughput(Throughput::Bytes(framed.len() as u64));
    for mode in [FsyncMode::Always, FsyncMode::Never] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = WalConfig {
            dir: dir.path().to_path_buf(),
            enabled: true,
            fsync: mode,
            fsync_interval: Duration::from_secs(1),
        };
        let (wal, _) = Wal::open(&cfg, |_, _| {}).expect("open wal");
        group.bench_function(BenchmarkId::from_parameter(format!("{mode:?}")), |b| {
            b.iter(|| rt.block_on(wal.append(framed.clone())).expect("append"))
        });
    }
    group.finish();
}

fn block_seal_decode(c: &mut Criterion) {
    let block = block_entries();
    let sealed = SealedBlock::seal(block.clone(), ZSTD_LEVEL).expect("seal");
    let mut group = c.benchmark_group("block_256k");
    group.throughput(Throughput::Bytes(raw_bytes(&block)));
    group.bench_function("seal", |b| {
        b.iter(|| SealedBlock::seal(black_box(block.clone()), ZSTD_LEVEL).expect("seal"))
    });
    group.bench_function("decode", |b| {
        b.iter(|| decode_block(black_box(&sealed.bytes)).expect("decode"))
    });
    group.finish();
    println!(
        "block_256k: {} entries, {} raw bytes, {} bytes sealed (ratio {:.1})",
        block.len(),
        raw_bytes(&block),
        sealed.bytes.len(),
        raw_bytes(&block) as f64 / sealed.bytes.len() as f64
    );
}

fn segment_encode(c: &mut Criterion) {
    let tenant = TenantId::new("bench").expect("tenant");
    let block = SealedBlock::seal(block_entries(), ZSTD_LEVEL).expect("seal");
    // 20 streams with one 6-block chunk each: a typical flush of one tenant and day.
    let chunks: Vec<FlushChunk> = (0..20)
        .map(|i| FlushChunk {
            labels: LabelSet::parse(&format!(r#"{{app="api", pod="api-{i}"}}"#)).expect("labels"),
            blocks: vec![block.clone(); 6],
        })
        .collect();
    let bytes: u64 = chunks
        .iter()
        .flat_map(|c| &c.blocks)
        .map(|b| b.bytes.len() as u64)
        .sum();
    let mut group = c.benchmark_group("segment_encode_20_streams");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("encode", |b| {
        b.iter(|| segment::encode(&tenant, Day::of_ns(T0), black_box(&chunks), &[], &[]))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = wal_append, block_seal_decode, segment_encode
}
criterion_main!(benches);
