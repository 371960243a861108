//! Engine-level Loki conformance: every `query` / `query_range` request of
//! `shared/conformance/queries.jsonl`, run straight through `parse_expr` + `eval` over the
//! conformance dataset held in an [`InMemorySource`], serialized with the crate's Loki
//! JSON form and compared with what Loki 3.7 answered (`expected/<name>.json`), using the
//! comparison rules of the conformance README.
//!
//! HTTP parameters are parsed here the way Loki's query API parses them (start/end as
//! unix seconds, nanoseconds or RFC3339; step as float seconds or a Prometheus duration;
//! `limit` 100 and `direction` backward by default). Requests for other paths (labels,
//! series, index stats) belong to the server's HTTP tests.

#![allow(clippy::unwrap_used)] // test harness: a panic is the failure report

use std::collections::BTreeMap;
use std::path::PathBuf;

use lode_push::LabelSet;
use query_lang::eval::{eval, Direction, InMemorySource, QueryParams};
use query_lang::parse_expr;
use query_lang::syntax::units::parse_prometheus_duration;
use serde_json::Value;

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance")
}

fn load_source(dir: &std::path::Path) -> InMemorySource {
    let body = std::fs::read(dir.join("dataset.json")).unwrap();
    let push = lode_push::decode_json(&body).unwrap();
    let mut source = InMemorySource::new();
    for stream in push.streams {
        let labels = LabelSet::parse(&stream.labels).unwrap();
        source.push(labels, stream.entries);
    }
    source
}

/// Loki's `parseTimestamp`: float seconds if it has a dot, an integer as seconds when it
/// has at most 10 digits and as nanoseconds otherwise, else RFC3339.
fn parse_time(value: &str) -> Result<i64, String> {
    if value.contains('.') {
        if let Ok(f) = value.parse::<f64>() {
            return Ok((f * 1e9).round() as i64);
        }
    }
    match value.parse::<i64>() {
        Ok(n) if value.len() <= 10 => Ok(n * 1_000_000_000),
        Ok(n) => Ok(n),
        Err(_) => chrono::DateTime::parse_from_rfc3339(value)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .ok_or_else(|| format!("cannot parse {value:?} to a valid timestamp")),
    }
}

/// Loki's `parseSecondsOrDuration`: float seconds, else a Prometheus duration.
fn parse_step(value: &str) -> Result<i64, String> {
    if let Ok(f) = value.parse::<f64>() {
        return Ok((f * 1e9).round() as i64);
    }
    parse_prometheus_duration(value)
        .ok_or_else(|| format!("cannot parse {value:?} to a valid duration"))
}

/// Builds the engine parameters of one request, as Loki's HTTP layer would.
fn query_params(
    path: &str,
    params: &BTreeMap<String, String>,
    headers: &BTreeMap<String, String>,
) -> Result<QueryParams, String> {
    let get = |k: &str| params.get(k).map(String::as_str);
    let mut qp = if path.ends_with("/query_range") {
        let end = get("end").map(parse_time).transpose()?.unwrap_or(0);
        let start = get("start")
            .map(parse_time)
            .transpose()?
            .unwrap_or(end - 3_600_000_000_000);
        let default_step = ((end - start) / 250 / 1_000_000_000).max(1) * 1_000_000_000;
        let step = get("step")
            .map(parse_step)
            .transpose()?
            .unwrap_or(default_step);
        QueryParams::range(start, end, step)
    } else {
        let time = get("time").map(parse_time).transpose()?.unwrap_or(0);
        QueryParams::instant(time)
    };
    if let Some(limit) = get("limit") {
        qp.limit = limit
            .parse()
            .map_err(|_| format!("invalid limit {limit:?}"))?;
    }
    qp.direction = match get("direction") {
        Some("forward") => Direction::Forward,
        _ => Direction::Backward,
    };
    qp.categorize_labels = headers
        .get("X-Loki-Response-Encoding-Flags")
        .is_some_and(|v| v.split(',').any(|f| f.trim() == "categorize-labels"));
    Ok(qp)
}

/// What Lode's engine answers, in the expected files' shape.
fn run(
    source: &InMemorySource,
    path: &str,
    params: &BTreeMap<String, String>,
    headers: &BTreeMap<String, String>,
) -> Value {
    let qp = match query_params(path, params, headers) {
        Ok(qp) => qp,
        Err(e) => return serde_json::json!({"status": 400, "text": e}),
    };
    let query = params.get("query").map(String::as_str).unwrap_or_default();
    let expr = match parse_expr(query) {
        Ok(e) => e,
        Err(e) => return serde_json::json!({"status": 400, "text": e.to_string()}),
    };
    match eval(&expr, &qp, source) {
        Ok(result) => {
            // Grafana reads "stream" before "values": a stream object must not open
            // with its values.
            let text = serde_json::to_string(&result).unwrap();
            assert!(
                !text.contains(r#"{"values":"#),
                "values before stream: {text}"
            );
            serde_json::json!({
                "status": 200,
                "json": {"status": "success", "data": serde_json::to_value(&result).unwrap()},
            })
        }
        Err(e) => {
            let status = if e.is_client_error() { 400 } else { 500 };
            serde_json::json!({"status": status, "text": e.to_string()})
        }
    }
}

/// Compares `got` with `want` per the README, pushing one line per difference.
fn compare(path: &str, want: &Value, got: &Value, samples: bool, diffs: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                if k == "stats" {
                    continue;
                }
                match g.get(k) {
                    Some(gv) => {
                        let samples = samples || (k == "data" && is_metric(wv));
                        if k == "result" && wv.is_array() && !is_scalar(w) {
                            compare_series(&format!("{path}.result"), wv, gv, samples, diffs);
                        } else {
                            compare(&format!("{path}.{k}"), wv, gv, samples, diffs);
                        }
                    }
                    None => diffs.push(format!("{path}.{k}: missing, want {wv}")),
                }
            }
            for k in g.keys() {
                if !w.contains_key(k) && k != "stats" {
                    diffs.push(format!("{path}.{k}: unexpected {}", g[k]));
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                diffs.push(format!("{path}: {} elements, want {}", g.len(), w.len()));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                compare(&format!("{path}[{i}]"), wv, gv, samples, diffs);
                if diffs.len() > 40 {
                    return;
                }
            }
        }
        (Value::Number(w), Value::Number(g)) => {
            if !close(w.as_f64().unwrap(), g.as_f64().unwrap()) {
                diffs.push(format!("{path}: {g}, want {w}"));
            }
        }
        (Value::String(w), Value::String(g)) if samples => {
            let same = match (w.parse::<f64>(), g.parse::<f64>()) {
                _ if matches!(w.as_str(), "NaN" | "+Inf" | "-Inf") => w == g,
                (Ok(a), Ok(b)) => close(a, b),
                _ => w == g,
            };
            if !same {
                diffs.push(format!("{path}: {g:?}, want {w:?}"));
            }
        }
        _ => {
            if want != got {
                diffs.push(format!("{path}: {got}, want {want}"));
            }
        }
    }
}

fn is_metric(data: &Value) -> bool {
    matches!(
        data.get("resultType").and_then(Value::as_str),
        Some("matrix" | "vector" | "scalar")
    )
}

fn is_scalar(data: &serde_json::Map<String, Value>) -> bool {
    data.get("resultType").and_then(Value::as_str) == Some("scalar")
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// The label set keying one series of a `streams`/`matrix`/`vector` result.
fn series_key(series: &Value) -> String {
    series
        .get("stream")
        .or_else(|| series.get("metric"))
        .map(Value::to_string)
        .unwrap_or_default()
}

/// Results compare as sets of series keyed by their labels; values in order.
fn compare_series(path: &str, want: &Value, got: &Value, samples: bool, diffs: &mut Vec<String>) {
    let (Some(w), Some(g)) = (want.as_array(), got.as_array()) else {
        diffs.push(format!("{path}: {got}, want {want}"));
        return;
    };
    let keyed = |v: &[Value]| -> BTreeMap<String, Value> {
        v.iter().map(|s| (series_key(s), s.clone())).collect()
    };
    let (wk, gk) = (keyed(w), keyed(g));
    if wk.len() != w.len() || gk.len() != g.len() {
        diffs.push(format!("{path}: duplicate series keys"));
    }
    for (k, wv) in &wk {
        match gk.get(k) {
            Some(gv) => compare(&format!("{path}{k}"), wv, gv, samples, diffs),
            None => diffs.push(format!("{path}: missing series {k}")),
        }
    }
    for k in gk.keys() {
        if !wk.contains_key(k) {
            diffs.push(format!("{path}: unexpected series {k}"));
        }
    }
}

#[test]
fn engine_answers_every_conformance_query_as_loki_does() {
    let dir = conformance_dir();
    if !dir.is_dir() {
        println!("skipping: conformance set not found at {}", dir.display());
        return;
    }
    let source = load_source(&dir);
    let queries = std::fs::read_to_string(dir.join("queries.jsonl")).unwrap();
    let (mut matched, mut total) = (0, 0);
    let mut failures = Vec::new();
    for line in queries.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).unwrap();
        let name = case["name"].as_str().unwrap();
        let path = case["path"].as_str().unwrap();
        if !(path.ends_with("/query") || path.ends_with("/query_range")) {
            continue;
        }
        total += 1;
        let strings = |v: &Value| -> BTreeMap<String, String> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let got = run(
            &source,
            path,
            &strings(&case["params"]),
            &strings(&case["headers"]),
        );
        let expected_file = dir.join("expected").join(format!("{name}.json"));
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(expected_file).unwrap()).unwrap();
        let mut diffs = Vec::new();
        compare("", &want, &got, false, &mut diffs);
        if diffs.is_empty() {
            matched += 1;
            continue;
        }
        println!("MISMATCH {name}:");
        for d in diffs.iter().take(20) {
            let short: String = d.chars().take(400).collect();
            println!("    {short}");
        }
        failures.push(name.to_owned());
    }
    println!("conformance: {matched}/{total} engine-level cases match Loki");
    assert!(total > 100, "only {total} query cases found");
    assert!(
        failures.is_empty(),
        "{} cases differ from Loki: {failures:?}",
        failures.len()
    );
}
