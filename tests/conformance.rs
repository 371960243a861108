//! Loki conformance over a live server: `lode serve` (in-process, on an ephemeral port)
//! gets `../shared/conformance/dataset.json` pushed over HTTP and answers every request of
//! `queries.jsonl` with its headers; each answer is compared with Loki's in `expected/` by
//! the README's rules. Three layouts of the same data must all match: everything in the
//! ingester's heads; the first half flushed to segments and the rest in heads (queries
//! span both); and everything read back from segments after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

#[path = "common/mod.rs"]
mod common;
#[path = "conformance/compare.rs"]
mod compare;

use std::path::PathBuf;

use serde_json::Value;

use common::TestServer;

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance")
}

struct Case {
    name: String,
    path: String,
    params: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    expected: Value,
}

fn cases() -> Vec<Case> {
    let dir = conformance_dir();
    let text = std::fs::read_to_string(dir.join("queries.jsonl")).expect(
        "../shared/conformance/queries.jsonl must exist beside the checkout (the shared fixtures)",
    );
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let q: Value = serde_json::from_str(line).unwrap();
            let name = q["name"].as_str().unwrap().to_string();
            let mut params = Vec::new();
            for (k, v) in q["params"].as_object().unwrap() {
                match v {
                    Value::Array(vs) => {
                        params.extend(vs.iter().map(|v| (k.clone(), v.as_str().unwrap().into())))
                    }
                    v => params.push((k.clone(), v.as_str().unwrap().to_string())),
                }
            }
            let headers = q
                .get("headers")
                .and_then(Value::as_object)
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let expected_text =
                std::fs::read_to_string(dir.join("expected").join(format!("{name}.json"))).unwrap();
            Case {
                path: q["path"].as_str().unwrap().to_string(),
                expected: serde_json::from_str(&expected_text).unwrap(),
                name,
                params,
                headers,
            }
        })
        .collect()
}

/// The dataset split by time: entries before `split_ns` and the rest, as two push bodies.
fn dataset_halves(split_ns: i64) -> (Value, Value) {
    let text = std::fs::read_to_string(conformance_dir().join("dataset.json")).unwrap();
    let data: Value = serde_json::from_str(&text).unwrap();
    let mut early = Vec::new();
    let mut late = Vec::new();
    for s in data["streams"].as_array().unwrap() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for v in s["values"].as_array().unwrap() {
            let ts: i64 = v[0].as_str().unwrap().parse().unwrap();
            if ts < split_ns {
                a.push(v.clone());
            } else {
                b.push(v.clone());
            }
        }
        early.push(serde_json::json!({"stream": s["stream"], "values": a}));
        late.push(serde_json::json!({"stream": s["stream"], "values": b}));
    }
    (
        serde_json::json!({ "streams": early }),
        serde_json::json!({ "streams": late }),
    )
}

/// Loki's `parse error at line L, col C` position, if the message has one.
fn parse_error_col(text: &str) -> Option<&str> {
    let at = text.find(", col ")?;
    let rest = &text[at + 6..];
    Some(&rest[..rest.find(':').unwrap_or(rest.len())])
}

/// Sends one case and describes how the answer differs from Loki's, if it does.
async fn check(client: &reqwest::Client, base: &str, case: &Case) -> Option<String> {
    let mut req = client
        .get(format!("{base}{}", case.path))
        .query(&case.params);
    for (k, v) in &case.headers {
        req = req.header(k, v);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Some(format!("request failed: {e}")),
    };
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let want_status = case.expected["status"].as_u64().unwrap_or(0) as u16;
    if status != want_status {
        return Some(format!(
            "status {status}, Loki answered {want_status}\n  body: {}",
            body.chars().take(400).collect::<String>()
        ));
    }
    if let Some(want) = case.expected.get("text").and_then(Value::as_str) {
        // Messages need not be word for word, but a parse error must point where Loki does.
        if let Some(col) = parse_error_col(want) {
            if parse_error_col(&body) != Some(col) {
                return Some(format!(
                    "error position differs:\n  Loki: {want}\n  Lode: {body}"
                ));
            }
        }
        return None;
    }
    let got: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return Some(format!("body is not JSON ({e}): {body}")),
    };
    if body.contains("\"values\"") && body.contains("\"stream\"") {
        let first_stream = body.find("\"stream\"");
        let first_values = body.find("\"values\"");
        if first_values < first_stream {
            return Some("\"values\" is written before \"stream\"".to_string());
        }
    }
    compare::diff(&case.expected["json"], &got)
}

/// Cases where Lode deliberately answers differently, each with the reason. Everything
/// else must match Loki.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    (
        "stats_prod",
        "Loki 3.7 counts each recently pushed chunk twice in index/stats (once from the \
         ingester that still holds it, once from the store index) and rounds bytes to KiB; \
         Lode counts each entry once and reports exact line bytes",
    ),
    ("grafana_stats", "same double count as stats_prod"),
];

/// Runs every case against `base`, returning the mismatches by name.
async fn run_all(base: &str) -> (usize, Vec<String>) {
    let client = reqwest::Client::new();
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        if KNOWN_DIFFERENCES.iter().any(|(n, _)| *n == case.name) {
            continue;
        }
        if let Some(d) = check(&client, base, case).await {
            failures.push(format!("--- {} ({})\n{d}", case.name, case.path));
        }
    }
    (cases.len() - KNOWN_DIFFERENCES.len(), failures)
}

fn report(layout: &str, total: usize, failures: &[String]) {
    println!(
        "conformance [{layout}]: {}/{total} match Loki",
        total - failures.len()
    );
    if !failures.is_empty() {
        panic!(
            "conformance [{layout}]: {} of {total} requests differ from Loki:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// As Loki was run for the expected answers: old samples accepted (the dataset is from
/// 2026-01-01), service-name and log-level discovery off; nothing hidden by retention.
const CONFIG: &str = r#"
limits_config:
  reject_old_samples: false
  retention_period: 0s
  max_query_lookback: 0s
  discover_service_name: []
  discover_log_levels: false
"#;

async fn push(server: &TestServer, body: &Value) {
    let (status, text) = server.push_json(None, body).await;
    assert_eq!(status, 204, "pushing the dataset failed: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conformance_request_matches_loki_from_heads_mixed_and_segments() {
    // 00:30 splits the hour in two.
    let (early, late) = dataset_halves(1_767_227_400_000_000_000);

    // 1. Everything in the ingester's heads.
    let server = TestServer::start(CONFIG).await;
    push(&server, &early).await;
    push(&server, &late).await;
    let (total, failures) = run_all(&server.url).await;
    report("heads", total, &failures);
    server.stop().await;

    // 2. Half in segments, half in heads: flush between the halves.
    let server = TestServer::start(CONFIG).await;
    push(&server, &early).await;
    let (status, text) = server.post_flush().await;
    assert_eq!(status, 204, "flush failed: {text}");
    push(&server, &late).await;
    let (total, failures) = run_all(&server.url).await;
    report("segments+heads", total, &failures);
    let dir = server.stop().await;

    // 3. After a restart everything comes from segments (the graceful stop flushed).
    let server = TestServer::restart(CONFIG, dir).await;
    let (total, failures) = run_all(&server.url).await;
    report("segments after restart", total, &failures);
    server.stop().await;
}
