//! `lode-querybench`: times the query classes of `shared/baselines.md` against a
//! Loki-compatible server holding `lode-loadgen`'s data, and prints a markdown table with
//! the median of several runs beside Loki's published figure.
//!
//! Owns the query set (each baseline class spelled over lode-loadgen's apps, namespaces and
//! fields), one needle line it pushes itself so the needle query has exactly one answer,
//! and the timing (wall clock of the whole HTTP request, answer read). It does not own the
//! data (lode-loadgen) nor any assertion about speed: numbers go to docs/benchmarks.md.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "lode-querybench",
    about = "Time the baseline query classes against a server loaded by lode-loadgen"
)]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    url: String,
    /// The window the data covers, ending now (lode-loadgen's --hours).
    #[arg(long, default_value_t = 6.0)]
    hours: f64,
    /// Runs per query; the median is reported beside the first run (which finds fewer
    /// blocks in the decoded-block cache).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// One baseline class: its name in baselines.md, Loki's median seconds, the query, and
/// whether it is an instant query (else a range query; log queries use limit 1000).
struct Class {
    name: &'static str,
    loki_seconds: f64,
    query: String,
    instant: bool,
    step: &'static str,
}

const NEEDLE: &str = "needle-7f3a9c2e-lode-querybench";

fn classes() -> Vec<Class> {
    let c = |name, loki_seconds, query: &str, instant, step| Class {
        name,
        loki_seconds,
        query: query.to_string(),
        instant,
        step,
    };
    vec![
        c(
            "selector only, newest 1000 lines",
            0.05,
            r#"{app="api", namespace="prod"}"#,
            false,
            "60s",
        ),
        c(
            "rare substring in one namespace, 1000 lines",
            2.7,
            r#"{namespace="prod"} |= "u12345""#,
            false,
            "60s",
        ),
        c(
            "needle (one line in all)",
            6.3,
            &format!(r#"{{namespace=~".+"}} |= "{NEEDLE}""#),
            false,
            "60s",
        ),
        c(
            "| json | status >= 500, 1000 lines",
            0.6,
            r#"{app="api"} | json | status >= 500"#,
            false,
            "60s",
        ),
        c(
            "sum by (app) (rate(... |= \"error\" [5m])), step 60s",
            3.4,
            r#"sum by (app) (rate({namespace="prod"} |= "error" [5m]))"#,
            false,
            "60s",
        ),
        c(
            "error ratio (json, status >= 500) / all, step 60s",
            1.0,
            r#"sum(rate({app="api"} | json | status >= 500 [5m])) / sum(rate({app="api"}[5m]))"#,
            false,
            "60s",
        ),
        c(
            "quantile_over_time(0.99, ... | unwrap [5m]) by (path)",
            1.1,
            r#"quantile_over_time(0.99, {app="api"} | json | unwrap duration_ms [5m]) by (path)"#,
            false,
            "60s",
        ),
        c(
            "topk(5, sum by (pod) (rate(...[10m]))) over one namespace",
            7.0,
            r#"topk(5, sum by (pod) (rate({namespace="prod"}[10m])))"#,
            false,
            "60s",
        ),
        c(
            "count of every line by app over 6 h (instant)",
            11.8,
            r#"sum by (app) (count_over_time({namespace=~".+"}[6h]))"#,
            true,
            "60s",
        ),
        c(
            "sum by (level) (count_over_time({app=...} | logfmt [5m]))",
            0.5,
            r#"sum by (level) (count_over_time({app="payments"} | logfmt [5m]))"#,
            false,
            "60s",
        ),
        c(
            "sum(bytes_over_time({app=...}[1h]))",
            0.9,
            r#"sum(bytes_over_time({app="web"}[1h]))"#,
            false,
            "60s",
        ),
    ]
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Pushes the needle into an existing stream, at its newest end (older would be out of
/// the out-of-order window); a search must still scan every block to find it.
async fn push_needle(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let ts = now_ns() - 1_000_000_000;
    let body = serde_json::json!({"streams": [{
        "stream": {"namespace": "staging", "app": "worker", "container": "worker",
                   "pod": "worker-7d9f1c-x1q", "job": "staging/worker"},
        "values": [[ts.to_string(), format!("level=error msg=\"{NEEDLE}\"")]]
    }]});
    let r = client
        .post(format!("{url}/loki/api/v1/push"))
        .json(&body)
        .send()
        .await
        .context("pushing the needle")?;
    if !r.status().is_success() {
        bail!(
            "pushing the needle: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// One timed request; the answer must be a success with a non-empty result.
async fn run_once(
    client: &reqwest::Client,
    args: &Args,
    class: &Class,
) -> anyhow::Result<(Duration, usize)> {
    let end = now_ns();
    let start = end - (args.hours * 3600.0 * 1e9) as i64;
    let (path, params): (&str, Vec<(&str, String)>) = if class.instant {
        (
            "/loki/api/v1/query",
            vec![("query", class.query.clone()), ("time", end.to_string())],
        )
    } else {
        (
            "/loki/api/v1/query_range",
            vec![
                ("query", class.query.clone()),
                ("start", start.to_string()),
                ("end", end.to_string()),
                ("step", class.step.to_string()),
                ("limit", "1000".to_string()),
            ],
        )
    };
    let began = Instant::now();
    let r = client
        .get(format!("{}{path}", args.url))
        .query(&params)
        .send()
        .await
        .with_context(|| format!("query {}", class.query))?;
    let status = r.status();
    let body = r.bytes().await.context("reading the answer")?;
    let took = began.elapsed();
    if !status.is_success() {
        bail!(
            "{}: {status}: {}",
            class.query,
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&body).context("answer is not JSON")?;
    let n = v["data"]["result"].as_array().map_or(0, Vec::len);
    Ok((took, n))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    push_needle(&client, &args.url).await?;
    println!(
        "| query class | Loki 3.7.6 | Lode first run | Lode (median of {}) | Lode / Loki speed-up | result series |",
        args.runs
    );
    println!("|---|---|---|---|---|---|");
    for class in classes() {
        let mut times = Vec::new();
        let mut series = 0;
        for _ in 0..args.runs.max(1) {
            let (t, n) = run_once(&client, &args, &class).await?;
            times.push(t);
            series = n;
        }
        let first = times[0].as_secs_f64();
        times.sort();
        let median = times[times.len() / 2].as_secs_f64();
        println!(
            "| {} | {:.2} s | {first:.3} s | {:.3} s | {:.0}× | {series} |",
            class.name,
            class.loki_seconds,
            median,
            class.loki_seconds / median.max(1e-6)
        );
    }
    Ok(())
}
