//! `lode-loadgen`: pushes realistic logs to a Loki-compatible push endpoint and reports
//! throughput.
//!
//! Owns generating a reproducible mix of container logs — JSON, logfmt and plain access
//! logs from several apps, namespaces and pods, with info/debug/warn/error levels and
//! per-app 5xx rates — spread evenly over the last `--hours` hours, batching them like
//! Promtail (snappy protobuf, ~1 MiB batches), pushing them with `--concurrency` parallel
//! requests, and printing MB/s and lines/s. Batches are built before the clock starts, so
//! the numbers measure the server, not the generator. It does not own checking what was
//! stored (the tests do that).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use lode::config::units::ByteSize;
use lode_push::{Entry, PushRequest, PushStream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(
    name = "lode-loadgen",
    about = "Push realistic logs to a Loki push endpoint and report throughput"
)]
struct Args {
    /// Base URL of the server; `/loki/api/v1/push` is appended.
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    url: String,
    /// Raw line bytes to push, e.g. 200MB or 1GiB.
    #[arg(long, default_value = "100MB")]
    bytes: String,
    /// Spread timestamps over this many hours ending now.
    #[arg(long, default_value_t = 1.0)]
    hours: f64,
    /// Raw line bytes per push request (Promtail's default batch is 1 MiB).
    #[arg(long, default_value = "1MiB")]
    batch: String,
    /// Push requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// `X-Scope-OrgID` to send.
    #[arg(long)]
    tenant: Option<String>,
    /// Seed of the generator; the same seed pushes the same logs.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

struct App {
    name: &'static str,
    format: Format,
    /// Share of requests answered 5xx.
    error_rate: f64,
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Logfmt,
    Access,
}

const APPS: [App; 8] = [
    App {
        name: "api",
        format: Format::Json,
        error_rate: 0.02,
    },
    App {
        name: "checkout",
        format: Format::Json,
        error_rate: 0.05,
    },
    App {
        name: "payments",
        format: Format::Logfmt,
        error_rate: 0.01,
    },
    App {
        name: "auth",
        format: Format::Logfmt,
        error_rate: 0.005,
    },
    App {
        name: "web",
        format: Format::Access,
        error_rate: 0.01,
    },
    App {
        name: "search",
        format: Format::Json,
        error_rate: 0.03,
    },
    App {
        name: "worker",
        format: Format::Logfmt,
        error_rate: 0.02,
    },
    App {
        name: "ingress-nginx",
        format: Format::Access,
        error_rate: 0.02,
    },
];
const NAMESPACES: [&str; 3] = ["prod", "staging", "dev"];
const PODS_PER_APP: usize = 3;
const PATHS: [&str; 8] = [
    "/api/v1/users",
    "/api/v1/orders",
    "/api/v1/cart",
    "/healthz",
    "/api/v1/search?q=shoes",
    "/login",
    "/static/app.js",
    "/api/v1/payments/charge",
];
const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
const MESSAGES: [&str; 6] = [
    "request completed",
    "cache miss, fetching from upstream",
    "user session refreshed",
    "retrying upstream call",
    "slow query detected",
    "connection pool exhausted",
];

struct Stream {
    labels: String,
    app: usize,
}

fn streams() -> Vec<Stream> {
    let mut out = Vec::new();
    for (a, app) in APPS.iter().enumerate() {
        for ns in NAMESPACES {
            for pod in 0..PODS_PER_APP {
                out.push(Stream {
                    labels: format!(
                        r#"{{namespace="{ns}", app="{name}", pod="{name}-7d9f{pod}c-x{pod}q", container="{name}", job="{ns}/{name}"}}"#,
                        name = app.name
                    ),
                    app: a,
                });
            }
        }
    }
    out
}

fn level(rng: &mut StdRng, failed: bool) -> &'static str {
    if failed {
        return "error";
    }
    match rng.gen_range(0..100) {
        0..=69 => "info",
        70..=84 => "debug",
        85..=96 => "warn",
        _ => "error",
    }
}

fn line(rng: &mut StdRng, app: &App, ts_ns: i64) -> String {
    let failed = rng.gen_bool(app.error_rate);
    let status = if failed {
        [500, 502, 503, 504][rng.gen_range(0..4)]
    } else {
        [200, 200, 200, 201, 204, 301, 404][rng.gen_range(0..7)]
    };
    let method = METHODS[rng.gen_range(0..METHODS.len())];
    let path = PATHS[rng.gen_range(0..PATHS.len())];
    let ms = rng.gen_range(1..2000);
    let lvl = level(rng, failed);
    let msg = MESSAGES[rng.gen_range(0..MESSAGES.len())];
    let trace: u64 = rng.gen();
    let user = rng.gen_range(1..50_000);
    match app.format {
        Format::Json => format!(
            r#"{{"ts":"{ts}","level":"{lvl}","msg":"{msg}","method":"{method}","path":"{path}","status":{status},"duration_ms":{ms},"trace_id":"{trace:016x}","user_id":"u{user}"}}"#,
            ts = chrono::DateTime::from_timestamp_nanos(ts_ns)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        Format::Logfmt => format!(
            r#"ts={ts} level={lvl} msg="{msg}" method={method} path={path} status={status} duration={ms}ms trace_id={trace:016x} user=u{user}"#,
            ts = chrono::DateTime::from_timestamp_nanos(ts_ns)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        Format::Access => format!(
            r#"10.{a}.{b}.{c} - - [{ts}] "{method} {path} HTTP/1.1" {status} {size} "-" "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0" {secs:.3}"#,
            a = rng.gen_range(0..255),
            b = rng.gen_range(0..255),
            c = rng.gen_range(0..255),
            ts = chrono::DateTime::from_timestamp_nanos(ts_ns).format("%d/%b/%Y:%H:%M:%S %z"),
            size = rng.gen_range(100..60_000),
            secs = ms as f64 / 1000.0,
        ),
    }
}

/// Encoded push bodies, and the raw line bytes and lines each holds.
struct Batch {
    body: Vec<u8>,
    bytes: u64,
    lines: u64,
}

fn generate(args: &Args, total: u64, batch_bytes: u64) -> Vec<Batch> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let streams = streams();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let span_ns = (args.hours * 3600.0 * 1e9) as i64;
    // ~190 bytes per line on average; timestamps advance evenly across the span.
    let expected_lines = (total / 190).max(1) as i64;
    let step = (span_ns / expected_lines).max(1);
    let mut ts = now - span_ns;
    let mut batches = Vec::new();
    let mut pushed = 0u64;
    while pushed < total {
        let mut per_stream: Vec<Vec<Entry>> = vec![Vec::new(); streams.len()];
        let (mut bytes, mut lines) = (0u64, 0u64);
        while bytes < batch_bytes && pushed + bytes < total {
            let s = rng.gen_range(0..streams.len());
            let text = line(&mut rng, &APPS[streams[s].app], ts);
            bytes += text.len() as u64;
            lines += 1;
            per_stream[s].push(Entry {
                timestamp_ns: ts.min(now),
                line: text,
                structured_metadata: Default::default(),
            });
            ts += step;
        }
        let req = PushRequest {
            streams: per_stream
                .into_iter()
                .enumerate()
                .filter(|(_, e)| !e.is_empty())
                .map(|(i, entries)| PushStream {
                    labels: streams[i].labels.clone(),
                    entries,
                })
                .collect(),
        };
        batches.push(Batch {
            body: lode_push::encode_protobuf_snappy(&req),
            bytes,
            lines,
        });
        pushed += bytes;
    }
    batches
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let total = ByteSize::parse(&args.bytes).context("--bytes")?.bytes();
    let batch_bytes = ByteSize::parse(&args.batch).context("--batch")?.bytes();
    if args.concurrency == 0 || batch_bytes == 0 || args.hours <= 0.0 {
        bail!("--concurrency, --batch and --hours must be positive");
    }
    eprintln!("generating {total} bytes of logs over {}h ...", args.hours);
    let batches = generate(&args, total, batch_bytes);
    let wire: u64 = batches.iter().map(|b| b.body.len() as u64).sum();
    let lines: u64 = batches.iter().map(|b| b.lines).sum();
    let raw: u64 = batches.iter().map(|b| b.bytes).sum();
    eprintln!(
        "{} batches, {lines} lines, {raw} raw bytes, {wire} bytes on the wire (snappy protobuf)",
        batches.len()
    );

    let url = format!("{}/loki/api/v1/push", args.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let queue = Arc::new(parking_lot::Mutex::new(batches.into_iter()));
    let failures = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, queue) = (client.clone(), url.clone(), queue.clone());
        let (failures, retries, tenant) = (failures.clone(), retries.clone(), args.tenant.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(batch) = queue.lock().next() else {
                    break;
                };
                let mut backoff = Duration::from_millis(50);
                loop {
                    let mut req = client
                        .post(&url)
                        .header("Content-Type", "application/x-protobuf")
                        .body(batch.body.clone());
                    if let Some(t) = &tenant {
                        req = req.header("X-Scope-OrgID", t);
                    }
                    match req.send().await {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            eprintln!(
                                "push refused ({status}): {}",
                                text.lines().next().unwrap_or("")
                            );
                            failures.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            eprintln!("push failed: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.context("push worker")?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "pushed {lines} lines, {:.1} MB raw ({:.1} MB wire) in {secs:.2}s: {:.1} MB/s raw, {:.0} lines/s; {} retries (429/5xx), {} failed batches",
        raw as f64 / 1e6,
        wire as f64 / 1e6,
        raw as f64 / 1e6 / secs,
        lines as f64 / secs,
        retries.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    if failures.load(Ordering::Relaxed) > 0 {
        bail!("some batches were refused");
    }
    Ok(())
}
