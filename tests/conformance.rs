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

/// Checks a plain-text 400 body against Loki's. Lode's wording may differ, but it must
/// tell the user what Loki's tells them:
///
/// - a syntax error (`parse error at line L, col C: syntax error: unexpected X[, expecting
///   A or B]`) must point at the same `line L, col C`, name the same unexpected token `X`,
///   and say `expecting` with every alternative Loki lists (order free; more are allowed);
/// - any other error must carry Loki's essential words: every word of four or more
///   letters (identifiers such as `sum_over_time` included, case-insensitive) except a
///   few fillers ([`FILLER_WORDS`]) and Go type names such as `*syntax.MatchersExpr`,
///   which name Loki's internals, not the user's mistake; and when Loki's says
///   `parse error`, so must Lode's.
///
/// Returns what is missing, if anything.
fn error_text_differs(loki: &str, lode: &str) -> Option<String> {
    let missing = match syntax_error(loki) {
        Some(want) => match syntax_error(lode) {
            None => vec![format!(
                "a syntax error at line {}, col {}",
                want.line, want.col
            )],
            Some(got) => {
                let mut m = Vec::new();
                if (&got.line, &got.col) != (&want.line, &want.col) {
                    m.push(format!("position line {}, col {}", want.line, want.col));
                }
                if got.unexpected != want.unexpected {
                    m.push(format!("unexpected {}", want.unexpected));
                }
                for alt in want.expecting.iter().filter(|a| !got.expecting.contains(a)) {
                    m.push(format!("expecting {alt}"));
                }
                m
            }
        },
        None => {
            let lode_words = essential_words(lode);
            let mut m: Vec<String> = essential_words(loki)
                .into_iter()
                .filter(|w| !lode_words.contains(w))
                .map(|w| format!("the word {w:?}"))
                .collect();
            if loki.starts_with("parse error") && !lode.starts_with("parse error") {
                m.push("the \"parse error\" prefix".to_string());
            }
            m
        }
    };
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "error message lacks {}:\n  Loki: {loki}\n  Lode: {lode}",
        missing.join(", ")
    ))
}

/// The parts of `parse error at line L, col C: syntax error: unexpected X, expecting A or B`.
struct SyntaxError {
    line: String,
    col: String,
    unexpected: String,
    expecting: Vec<String>,
}

fn syntax_error(text: &str) -> Option<SyntaxError> {
    let rest = text.trim().strip_prefix("parse error at line ")?;
    let (line, rest) = rest.split_once(", col ")?;
    let (col, rest) = rest.split_once(": ")?;
    let rest = rest.strip_prefix("syntax error: unexpected ")?;
    let (unexpected, expecting) = match rest.split_once(", expecting ") {
        Some((u, e)) => (u, e.split(" or ").map(str::to_string).collect()),
        None => (rest, Vec::new()),
    };
    Some(SyntaxError {
        line: line.to_string(),
        col: col.to_string(),
        unexpected: unexpected.to_string(),
        expecting,
    })
}

/// Words that carry no meaning of their own in Loki's messages.
const FILLER_WORDS: &[&str] = &[
    "does", "have", "that", "this", "will", "with", "your", "please",
];

/// Lowercased words of four or more letters (`_` and digits inside a word kept), without
/// Go type names (`*pkg.Type`) and [`FILLER_WORDS`].
fn essential_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for token in text.split_whitespace() {
        let go_type = token.starts_with('*') && token.contains('.');
        if go_type {
            continue;
        }
        for word in token.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            let word = word.to_lowercase();
            if word.chars().filter(|c| c.is_alphabetic()).count() >= 4
                && !FILLER_WORDS.contains(&word.as_str())
                && !words.contains(&word)
            {
                words.push(word);
            }
        }
    }
    words
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
        return error_text_differs(want, &body);
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

/// How many requests the conformance set holds (its README); fewer loaded means the
/// fixtures changed or were read wrong, and the run must say so.
const CASES: usize = 131;

/// Runs every case against `base`, returning how many were compared and the mismatches
/// by name.
async fn run_all(base: &str) -> (usize, Vec<String>) {
    let client = reqwest::Client::new();
    let cases = cases();
    assert_eq!(
        cases.len(),
        CASES,
        "queries.jsonl should hold {CASES} requests, {} were loaded",
        cases.len()
    );
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in &cases {
        if let Some(d) = check(&client, base, case).await {
            failures.push(format!("--- {} ({})\n{d}", case.name, case.path));
        }
        compared += 1;
    }
    (compared, failures)
}

fn report(layout: &str, total: usize, failures: &[String]) {
    assert_eq!(
        total, CASES,
        "conformance [{layout}]: {total} of {CASES} requests were compared"
    );
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

/// As Loki was run for the expected answers (the dataset is from 2026-01-01).
const CONFIG: &str = common::OLD_DATA_CONFIG;

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

#[test]
fn error_check_requires_loki_position_unexpected_token_and_alternatives() {
    let loki = "parse error at line 1, col 14: syntax error: unexpected $end, expecting } or ,";
    assert_eq!(error_text_differs(loki, loki), None);
    let swapped = "parse error at line 1, col 14: syntax error: unexpected $end, expecting , or }";
    assert_eq!(error_text_differs(loki, swapped), None);
    for wrong in [
        "parse error at line 1, col 13: syntax error: unexpected $end, expecting } or ,",
        "parse error at line 2, col 14: syntax error: unexpected $end, expecting } or ,",
        "parse error at line 1, col 14: syntax error: unexpected }, expecting } or ,",
        "parse error at line 1, col 14: syntax error: unexpected $end, expecting }",
        "parse error at line 1, col 14: syntax error: unexpected $end",
        "parse error: bad query",
    ] {
        assert!(error_text_differs(loki, wrong).is_some(), "{wrong}");
    }
}

#[test]
fn error_check_requires_loki_essential_words_but_not_go_type_names() {
    let loki =
        "parse error : unexpected type for left leg of binary operation (/): *syntax.MatchersExpr";
    let lode = "parse error : unexpected type for left leg of binary operation (/): a log selector";
    assert_eq!(error_text_differs(loki, lode), None);
    assert!(error_text_differs(loki, "parse error : bad binary operation").is_some());
    let loki = "log queries are not supported as an instant query type, please change your query to a range query type";
    assert!(error_text_differs(loki, "bad request").is_some());
    assert!(error_text_differs(
        "parse error : invalid aggregation sum_over_time without unwrap",
        "invalid aggregation sum_over_time without unwrap"
    )
    .is_some());
}
