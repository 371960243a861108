//! The read API as its clients use it: the requests Grafana's Loki data source makes
//! (health check, Explore log query with `categorize-labels` from heads and segments,
//! metric query with an `ms` step, label browser, series), live tail over a real
//! WebSocket while pushing (`limit`, `start`, `delay_for`, replay from segments), the
//! `lode` CLI against a live server (time range, output forms, tail, tenant), bad input,
//! `query_timeout` and `max_query_series`, and concurrent heavy queries.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use common::{now_ns, TestServer};

/// Discovery off so result labels are exactly what was pushed.
const CONFIG: &str = r#"
limits_config:
  discover_service_name: []
  discover_log_levels: false
"#;

/// Pushes `lines` to `labels` one millisecond apart, ending about now.
async fn push_lines(server: &TestServer, labels: &Value, lines: &[&str]) -> i64 {
    let base = now_ns() - 10_000_000_000;
    let values: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::json!([(base + i as i64 * 1_000_000).to_string(), l]))
        .collect();
    let body = serde_json::json!({"streams": [{"stream": labels, "values": values}]});
    let (status, text) = server.push_json(None, &body).await;
    assert_eq!(status, 204, "push failed: {text}");
    base
}

async fn get_json(server: &TestServer, path: &str, params: &[(&str, String)]) -> (u16, String) {
    let r = server
        .client
        .get(format!("{}{path}", server.url))
        .query(params)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

fn window() -> Vec<(&'static str, String)> {
    let now = now_ns();
    vec![
        ("start", (now - 3_600_000_000_000).to_string()),
        ("end", (now + 60_000_000_000).to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_health_check_answers_one_sample_of_two() {
    let server = TestServer::start(CONFIG).await;
    let (status, body) = get_json(
        &server,
        "/loki/api/v1/query",
        &[
            ("query", "vector(1)+vector(1)".to_string()),
            ("direction", "backward".to_string()),
            ("time", "4000000000".to_string()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "vector");
    let result = v["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{body}");
    assert_eq!(result[0]["value"][0], 4_000_000_000_i64);
    assert_eq!(result[0]["value"][1], "2");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_explore_log_query_with_categorize_labels_gets_three_element_values() {
    let server = TestServer::start(CONFIG).await;
    let base = now_ns() - 5_000_000_000;
    let body = serde_json::json!({"streams": [{
        "stream": {"app": "api", "env": "prod"},
        "values": [
            [base.to_string(), r#"{"status":500,"msg":"boom"}"#, {"trace_id": "abc"}],
            [(base + 1).to_string(), "plain text line"],
        ]
    }]});
    let (status, text) = server.push_json(None, &body).await;
    assert_eq!(status, 204, "{text}");

    let mut params = window();
    params.extend([
        ("query", r#"{app="api"} | json"#.to_string()),
        ("direction", "backward".to_string()),
        ("limit", "1000".to_string()),
        ("step", "2000ms".to_string()),
    ]);
    let r = server
        .client
        .get(format!("{}/loki/api/v1/query_range", server.url))
        .query(&params)
        .header("X-Loki-Response-Encoding-Flags", "categorize-labels")
        .header("X-Query-Tags", "Source=grafana")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/json; charset=UTF-8"
    );
    let text = r.text().await.unwrap();
    // Grafana reads in order: encodingFlags before result, stream before values.
    let pos = |k: &str| {
        text.find(k)
            .unwrap_or_else(|| panic!("{k} missing in {text}"))
    };
    assert!(pos("\"encodingFlags\"") < pos("\"result\""), "{text}");
    assert!(pos("\"stream\"") < pos("\"values\""), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["data"]["encodingFlags"],
        serde_json::json!(["categorize-labels"])
    );
    let streams = v["data"]["result"].as_array().unwrap();
    let mut seen = Vec::new();
    for s in streams {
        assert_eq!(
            s["stream"],
            serde_json::json!({"app": "api", "env": "prod"})
        );
        for value in s["values"].as_array().unwrap() {
            let value = value.as_array().unwrap();
            assert_eq!(
                value.len(),
                3,
                "every value has the categories object: {text}"
            );
            assert!(value[0].is_string() && value[1].is_string());
            seen.push((value[1].as_str().unwrap().to_string(), value[2].clone()));
        }
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen.len(), 2, "{text}");
    assert_eq!(
        seen[1].1,
        serde_json::json!({"structuredMetadata": {"trace_id": "abc"}, "parsed": {"msg": "boom", "status": "500"}})
    );
    // The plain line fails JSON parsing: the error is a parsed label.
    assert_eq!(seen[0].1["parsed"]["__error__"], "JSONParserErr", "{text}");
    assert!(
        v["data"]["stats"]["summary"]["totalLinesProcessed"]
            .as_u64()
            .unwrap()
            >= 2
    );

    // Without the header: two-element values and metadata merged into the stream.
    let r = server
        .client
        .get(format!("{}/loki/api/v1/query_range", server.url))
        .query(&params)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["data"].get("encodingFlags").is_none());
    for s in v["data"]["result"].as_array().unwrap() {
        for value in s["values"].as_array().unwrap() {
            assert_eq!(value.as_array().unwrap().len(), 2);
        }
    }
    assert!(v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["stream"]["trace_id"] == "abc"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_metric_query_with_ms_step_gets_number_times_and_string_values() {
    let server = TestServer::start(CONFIG).await;
    push_lines(
        &server,
        &serde_json::json!({"app": "api", "level": "info"}),
        &["a", "b", "c"],
    )
    .await;
    let mut params = window();
    params.extend([
        (
            "query",
            r#"sum by (app) (count_over_time({app="api"}[1h]))"#.to_string(),
        ),
        ("step", "60000ms".to_string()),
        ("limit", "1000".to_string()),
    ]);
    let (status, body) = get_json(&server, "/loki/api/v1/query_range", &params).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["resultType"], "matrix");
    let series = v["data"]["result"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{body}");
    assert_eq!(series[0]["metric"], serde_json::json!({"app": "api"}));
    let last = series[0]["values"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(last[0].is_number(), "{body}");
    assert_eq!(last[1], "3");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_browser_and_series_list_indexed_labels_only() {
    let server = TestServer::start(CONFIG).await;
    let base = now_ns() - 5_000_000_000;
    let body = serde_json::json!({"streams": [
        {"stream": {"app": "api", "env": "prod"}, "values": [[base.to_string(), "x", {"trace_id": "t"}]]},
        {"stream": {"app": "db", "env": "dev"}, "values": [[base.to_string(), "y"]]},
    ]});
    assert_eq!(server.push_json(None, &body).await.0, 204);
    let (status, body) = get_json(&server, "/loki/api/v1/labels", &window()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["data"],
        serde_json::json!(["app", "env"]),
        "no structured metadata"
    );

    let mut params = window();
    params.push(("query", r#"{env="prod"}"#.to_string()));
    let (_, body) = get_json(&server, "/loki/api/v1/label/app/values", &params).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"], serde_json::json!(["api"]));

    let mut params = window();
    params.push(("match[]", r#"{app=~"api|db"}"#.to_string()));
    let (_, body) = get_json(&server, "/loki/api/v1/series", &params).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut series = v["data"].as_array().unwrap().clone();
    series.sort_by_key(|s| s["app"].as_str().unwrap().to_string());
    assert_eq!(
        Value::Array(series),
        serde_json::json!([{"app": "api", "env": "prod"}, {"app": "db", "env": "dev"}])
    );

    // logcli spells it `match`.
    let mut params = window();
    params.push(("match", r#"{app="db"}"#.to_string()));
    let (_, body) = get_json(&server, "/loki/api/v1/series", &params).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"], serde_json::json!([{"app": "db", "env": "dev"}]));
    server.stop().await;
}

/// Reads tail messages until `lines` holds `want` lines.
async fn read_tail<S>(ws: &mut S, lines: &mut Vec<String>, want: usize)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while lines.len() < want {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a tail message within 10s")
            .expect("socket open")
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        for s in v["streams"].as_array().unwrap() {
            assert_eq!(s["stream"]["app"], "tailed", "{text}");
            for value in s["values"].as_array().unwrap() {
                lines.push(value[1].as_str().unwrap().to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_replays_then_streams_new_pushes_over_a_websocket() {
    let server = TestServer::start(CONFIG).await;
    let labels = serde_json::json!({"app": "tailed"});
    push_lines(&server, &labels, &["before-1", "before-2"]).await;
    push_lines(&server, &serde_json::json!({"app": "other"}), &["not me"]).await;

    let ws_url = format!(
        "{}/loki/api/v1/tail?query={}&limit=10",
        server.url.replacen("http://", "ws://", 1),
        "%7Bapp%3D%22tailed%22%7D%20%21%3D%20%22skip%22"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap();

    let mut lines: Vec<String> = Vec::new();
    read_tail(&mut ws, &mut lines, 2).await;
    push_lines(&server, &labels, &["live-1", "skip this", "live-2"]).await;
    read_tail(&mut ws, &mut lines, 4).await;
    assert_eq!(lines, ["before-1", "before-2", "live-1", "live-2"]);
    ws.send(Message::Close(None)).await.unwrap();

    // A bad query is refused before any upgrade, as plain text.
    let (status, body) = get_json(
        &server,
        "/loki/api/v1/tail",
        &[("query", r#"{app="tailed""#.to_string())],
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("parse error"), "{body}");
    server.stop().await;
}

type Tail =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/loki/api/v1/tail` with `params` over a WebSocket.
async fn open_tail(server: &TestServer, params: &[(&str, &str)]) -> Tail {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let url = format!(
        "{}/loki/api/v1/tail?{query}",
        server.url.replacen("http://", "ws://", 1)
    );
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap()
        .0
}

/// `(timestamp, line)` of the entries of tail messages, read until `want` came.
async fn tail_values(ws: &mut Tail, want: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    while out.len() < want {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("{want} tailed entries within 10s, got {out:?}"))
            .expect("socket open")
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        for s in v["streams"].as_array().unwrap() {
            for value in s["values"].as_array().unwrap() {
                let ts = value[0].as_str().unwrap().parse().unwrap();
                out.push((ts, value[1].as_str().unwrap().to_string()));
            }
        }
    }
    out
}

/// Lines of `(timestamp, line)` pairs.
fn lines_of(values: &[(i64, String)]) -> Vec<&str> {
    values.iter().map(|(_, l)| l.as_str()).collect()
}

/// Pushes `(timestamp, line)` entries to `{app="<app>"}`.
async fn push_at(server: &TestServer, app: &str, entries: &[(i64, &str)]) {
    let values: Vec<Value> = entries
        .iter()
        .map(|(ts, line)| serde_json::json!([ts.to_string(), line]))
        .collect();
    let body = serde_json::json!({"streams": [{"stream": {"app": app}, "values": values}]});
    let (status, text) = server.push_json(None, &body).await;
    assert_eq!(status, 204, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_replays_the_newest_limit_entries_since_start() {
    let server = TestServer::start(CONFIG).await;
    let sec = 1_000_000_000_i64;
    let now = now_ns();
    let mut entries = vec![(now - 2400 * sec, "forty minutes ago")];
    let recent = ["r1", "r2", "r3", "r4", "r5"];
    for (i, line) in recent.iter().enumerate() {
        entries.push((now - 300 * sec + i as i64 * sec, line));
    }
    push_at(&server, "replay", &entries).await;
    let sel = r#"{app="replay"}"#;
    let start = (now - 600 * sec).to_string();

    // `limit` caps the replay to the newest entries since `start`, sent oldest first;
    // live entries still come after it.
    let mut ws = open_tail(
        &server,
        &[("query", sel), ("start", start.as_str()), ("limit", "3")],
    )
    .await;
    assert_eq!(lines_of(&tail_values(&mut ws, 3).await), ["r3", "r4", "r5"]);
    push_at(&server, "replay", &[(now_ns(), "live")]).await;
    assert_eq!(lines_of(&tail_values(&mut ws, 1).await), ["live"]);
    ws.send(Message::Close(None)).await.unwrap();

    // `start` bounds the replay; without it the replay reaches back an hour.
    let mut ws = open_tail(
        &server,
        &[("query", sel), ("start", start.as_str()), ("limit", "10")],
    )
    .await;
    assert_eq!(
        lines_of(&tail_values(&mut ws, 6).await),
        ["r1", "r2", "r3", "r4", "r5", "live"]
    );
    ws.send(Message::Close(None)).await.unwrap();
    let mut ws = open_tail(&server, &[("query", sel)]).await;
    assert_eq!(
        lines_of(&tail_values(&mut ws, 7).await),
        ["forty minutes ago", "r1", "r2", "r3", "r4", "r5", "live"]
    );
    ws.send(Message::Close(None)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_sends_an_entry_once_delay_for_has_passed_since_its_timestamp() {
    let server = TestServer::start(CONFIG).await;
    let sec = 1_000_000_000_i64;
    let sel = r#"{app="delayed"}"#;
    push_at(&server, "delayed", &[(now_ns() - 30 * sec, "replayed")]).await;
    let mut ws = open_tail(&server, &[("query", sel), ("delay_for", "2")]).await;
    // The replay came: what follows is live.
    assert_eq!(lines_of(&tail_values(&mut ws, 1).await), ["replayed"]);
    // A fresh entry waits for delay_for; one from a slow sender, already older than
    // the delay, pushed just after it, goes out first.
    let ts = now_ns();
    push_at(&server, "delayed", &[(ts, "fresh")]).await;
    let late = now_ns() - 20 * sec;
    push_at(&server, "delayed", &[(late, "late")]).await;
    assert_eq!(tail_values(&mut ws, 1).await, [(late, "late".to_string())]);
    let got = tail_values(&mut ws, 1).await;
    let received = now_ns();
    assert_eq!(got, [(ts, "fresh".to_string())]);
    assert!(
        received - ts >= 2 * sec,
        "sent {} ms after its timestamp, before delay_for",
        (received - ts) / 1_000_000
    );
    ws.send(Message::Close(None)).await.unwrap();

    // Loki's bounds: at most 5 seconds, a whole number.
    for (delay, needle) in [
        ("6", "delay_for can't be greater than 5"),
        ("1.5", "invalid delay_for \"1.5\""),
    ] {
        let params = [("query", sel.to_string()), ("delay_for", delay.to_string())];
        let (status, body) = get_json(&server, "/loki/api/v1/tail", &params).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(needle), "{body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_without_delay_for_sends_an_entry_stamped_ahead_of_the_clock_at_once() {
    let server = TestServer::start(CONFIG).await;
    let sel = r#"{app="ahead"}"#;
    push_at(&server, "ahead", &[(now_ns() - 1_000_000_000, "replayed")]).await;
    let mut ws = open_tail(&server, &[("query", sel)]).await;
    assert_eq!(lines_of(&tail_values(&mut ws, 1).await), ["replayed"]);
    // Two minutes ahead (a sender's clock running fast, inside the creation grace
    // period): accepted, and tailed now rather than when the clock reaches it.
    let ahead = now_ns() + 120 * 1_000_000_000;
    let sent = std::time::Instant::now();
    push_at(&server, "ahead", &[(ahead, "from the future")]).await;
    assert_eq!(
        tail_values(&mut ws, 1).await,
        [(ahead, "from the future".to_string())]
    );
    // Not a timing benchmark: held until its timestamp, it would take two minutes.
    assert!(
        sent.elapsed() < Duration::from_secs(60),
        "tailed only after {:?}",
        sent.elapsed()
    );
    ws.send(Message::Close(None)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_replays_entries_from_segments_after_a_flush_and_a_restart() {
    let yaml = CONFIG;
    let server = TestServer::start(yaml).await;
    let sec = 1_000_000_000_i64;
    let base = now_ns() - 60 * sec;
    push_at(
        &server,
        "stored",
        &[(base, "flushed-1"), (base + sec, "flushed-2")],
    )
    .await;
    assert_eq!(server.post_flush().await.0, 204);
    push_at(&server, "stored", &[(base + 2 * sec, "at-shutdown-3")]).await;
    let dir = server.stop().await;
    let server = TestServer::restart(yaml, dir).await;
    assert!(
        server.head_lines("fake", r#"{app="stored"}"#).is_empty(),
        "everything is in segments after a clean stop"
    );
    push_at(&server, "stored", &[(base + 3 * sec, "head-4")]).await;

    let mut ws = open_tail(&server, &[("query", r#"{app="stored"}"#), ("limit", "10")]).await;
    assert_eq!(
        lines_of(&tail_values(&mut ws, 4).await),
        ["flushed-1", "flushed-2", "at-shutdown-3", "head-4"]
    );
    push_at(&server, "stored", &[(now_ns(), "live-5")]).await;
    assert_eq!(lines_of(&tail_values(&mut ws, 1).await), ["live-5"]);
    ws.send(Message::Close(None)).await.unwrap();
    server.stop().await;
}

/// `(timestamp, line, categories)` of every value of a `categorize-labels` log query,
/// in time order, after checking the envelope's shape.
async fn categorized(server: &TestServer, query: &str, start: i64, end: i64) -> Vec<Value> {
    let params = [
        ("query", query.to_string()),
        ("start", start.to_string()),
        ("end", end.to_string()),
        ("direction", "forward".to_string()),
    ];
    let r = server
        .client
        .get(format!("{}/loki/api/v1/query_range", server.url))
        .query(&params)
        .header("X-Loki-Response-Encoding-Flags", "categorize-labels")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["data"]["encodingFlags"],
        serde_json::json!(["categorize-labels"]),
        "{text}"
    );
    let mut out = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        // Only indexed labels stay in the stream.
        assert_eq!(s["stream"], serde_json::json!({"app": "cat"}), "{text}");
        for value in s["values"].as_array().unwrap() {
            let value = value.as_array().unwrap();
            assert_eq!(value.len(), 3, "{text}");
            assert!(value[0].is_string() && value[1].is_string(), "{text}");
            out.push(Value::Array(value.clone()));
        }
    }
    out.sort_by_key(|v| v[0].as_str().unwrap().parse::<i64>().unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn categorize_labels_separates_metadata_and_parsed_labels_from_heads_and_segments() {
    use serde_json::json;
    let yaml = CONFIG;
    let server = TestServer::start(yaml).await;
    let base = now_ns() - 5_000_000_000;
    let ts = |i: i64| (base + i).to_string();
    let body = serde_json::json!({"streams": [{
        "stream": {"app": "cat"},
        "values": [
            [ts(0), r#"{"status":500,"msg":"boom"}"#, {"trace_id": "abc", "user": "u1"}],
            [ts(1), r#"{"status":200,"msg":"ok"}"#],
            [ts(2), r#"{"status":404,"msg":"gone"}"#, {"trace_id": "def"}],
        ]
    }]});
    assert_eq!(server.push_json(None, &body).await.0, 204);
    let (start, end) = (base - 1_000_000_000, base + 1_000_000_000);
    let plain_want = vec![
        json!([ts(0), r#"{"status":500,"msg":"boom"}"#, {"structuredMetadata": {"trace_id": "abc", "user": "u1"}}]),
        json!([ts(1), r#"{"status":200,"msg":"ok"}"#, {}]),
        json!([ts(2), r#"{"status":404,"msg":"gone"}"#, {"structuredMetadata": {"trace_id": "def"}}]),
    ];
    let parsed_want = vec![
        json!([ts(0), r#"{"status":500,"msg":"boom"}"#, {"structuredMetadata": {"trace_id": "abc", "user": "u1"}, "parsed": {"msg": "boom", "status": "500"}}]),
        json!([ts(1), r#"{"status":200,"msg":"ok"}"#, {"parsed": {"msg": "ok", "status": "200"}}]),
        json!([ts(2), r#"{"status":404,"msg":"gone"}"#, {"structuredMetadata": {"trace_id": "def"}, "parsed": {"msg": "gone", "status": "404"}}]),
    ];
    let formatted_want = vec![
        json!([ts(0), "boom", {"structuredMetadata": {"trace_id": "abc", "user": "u1"}, "parsed": {"msg": "boom", "status": "500"}}]),
        json!([ts(2), "gone", {"structuredMetadata": {"trace_id": "def"}, "parsed": {"msg": "gone", "status": "404"}}]),
    ];
    let cases = [
        (r#"{app="cat"}"#, plain_want),
        (r#"{app="cat"} | json"#, parsed_want),
        (
            r#"{app="cat"} | json | status >= 400 | line_format "{{.msg}}""#,
            formatted_want,
        ),
    ];
    for (query, want) in &cases {
        assert_eq!(
            &categorized(&server, query, start, end).await,
            want,
            "heads: {query}"
        );
    }

    // After a restart the entries come from segments, with the same categories.
    let dir = server.stop().await;
    let server = TestServer::restart(yaml, dir).await;
    assert!(server.head_lines("fake", r#"{app="cat"}"#).is_empty());
    for (query, want) in &cases {
        assert_eq!(
            &categorized(&server, query, start, end).await,
            want,
            "segments: {query}"
        );
    }
    // Without the flag, metadata and parsed labels are stream labels again.
    let params = [
        ("query", r#"{app="cat"} | json"#.to_string()),
        ("start", start.to_string()),
        ("end", end.to_string()),
    ];
    let (status, body) = get_json(&server, "/loki/api/v1/query_range", &params).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["data"].get("encodingFlags").is_none());
    let mut streams: Vec<Value> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"].clone())
        .collect();
    streams.sort_by_key(|s| s["msg"].as_str().unwrap().to_string());
    assert_eq!(
        streams,
        [
            json!({"app": "cat", "msg": "boom", "status": "500", "trace_id": "abc", "user": "u1"}),
            json!({"app": "cat", "msg": "gone", "status": "404", "trace_id": "def"}),
            json!({"app": "cat", "msg": "ok", "status": "200"}),
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_status_and_message() {
    let server = TestServer::start(CONFIG).await;
    let q = |extra: &[(&str, &str)]| -> Vec<(&'static str, String)> {
        let mut p = window();
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            p.push((Box::leak(k.to_string().into_boxed_str()), v.to_string()));
        }
        p
    };
    type Case = (&'static str, Vec<(&'static str, String)>, u16, &'static str);
    let cases: Vec<Case> = vec![
        (
            "/loki/api/v1/query_range",
            q(&[("query", "{app=")]),
            400,
            "parse error at line 1",
        ),
        (
            "/loki/api/v1/query_range",
            q(&[("query", "{app=\"a\"}"), ("start", "yesterday")]),
            400,
            "yesterday",
        ),
        (
            "/loki/api/v1/query_range",
            q(&[("query", "rate({app=\"a\"}[1m])"), ("step", "1ms")]),
            400,
            "11,000 points",
        ),
        (
            "/loki/api/v1/query_range",
            q(&[("query", "{app=\"a\"}"), ("start", "0")]),
            400,
            "max_query_length",
        ),
        (
            "/loki/api/v1/query_range",
            q(&[("query", "{app=\"a\"}"), ("limit", "100000")]),
            400,
            "max_entries_limit_per_query",
        ),
        ("/loki/api/v1/nope", vec![], 404, "404 page not found"),
    ];
    for (path, params, want, needle) in cases {
        let (status, body) = get_json(&server, path, &params).await;
        assert_eq!(status, want, "{path} {params:?}: {body}");
        assert!(body.contains(needle), "{path} {params:?}: {body}");
    }
    // A huge query (over the parser's cap) sent as a POST form.
    let huge = format!("{{app=\"a\"}} |= \"{}\"", "x".repeat(200_000));
    let mut form = window();
    form.push(("query", huge));
    let r = server
        .client
        .post(format!("{}/loki/api/v1/query_range", server.url))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("too long"));
    // The server is still fine.
    assert_eq!(server.get_text("/ready").await.0, 200);
    server.stop().await;
}

/// POSTs `form` as `application/x-www-form-urlencoded` to `path`.
async fn post_form(server: &TestServer, path: &str, form: &[(&str, String)]) -> (u16, Value) {
    server.post_form(path, form).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_range_and_instant_query_answer_post_form_bodies() {
    let server = TestServer::start(CONFIG).await;
    let base = push_lines(
        &server,
        &serde_json::json!({"app": "api"}),
        &["first", "second", "third"],
    )
    .await;

    // A log query: entries newest first, exactly as a GET would get them.
    let mut form = window();
    form.extend([
        ("query", r#"{app="api"} != "second""#.to_string()),
        ("limit", "10".to_string()),
    ]);
    let (status, body) = post_form(&server, "/loki/api/v1/query_range", &form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "streams", "{body}");
    assert_eq!(
        body["data"]["result"],
        serde_json::json!([{"stream": {"app": "api"}, "values": [
            [(base + 2_000_000).to_string(), "third"],
            [base.to_string(), "first"],
        ]}])
    );

    // A metric range query.
    let mut form = window();
    form.extend([
        ("query", r#"count_over_time({app="api"}[1h])"#.to_string()),
        ("step", "60".to_string()),
    ]);
    let (status, body) = post_form(&server, "/loki/api/v1/query_range", &form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "matrix", "{body}");
    let values = body["data"]["result"][0]["values"].as_array().unwrap();
    assert_eq!(values.last().unwrap()[1], "3", "{body}");

    // An instant query at a time after the pushes.
    let time = (base + 60_000_000_000).to_string();
    let form = [
        (
            "query",
            r#"sum(count_over_time({app="api"}[5m]))"#.to_string(),
        ),
        ("time", time.clone()),
    ];
    let (status, body) = post_form(&server, "/loki/api/v1/query", &form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "vector", "{body}");
    assert_eq!(body["data"]["result"][0]["value"][1], "3", "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_get_query_string_gets_a_4xx_and_the_server_stays_up() {
    let server = TestServer::start(CONFIG).await;
    push_lines(&server, &serde_json::json!({"app": "api"}), &["kept"]).await;
    // 200 KB of query string, over the 128 KiB query cap and over the 64 KiB a URI may
    // have in hyper (and in reqwest, so the request is written by hand).
    let huge: String = form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "query",
            &format!("{{app=\"api\"}} |= \"{}\"", "x".repeat(200_000)),
        )
        .finish();
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /loki/api/v1/query_range?{huge} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    // The server may answer and close before reading the whole request line.
    let _ = conn.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/1.1 414"),
        "a 200 KB GET query string should get 414 URI Too Long, got {status_line:?}"
    );
    // The server still answers, on a new connection and on the client's pool.
    assert_eq!(server.get_text("/ready").await.0, 200);
    let mut params = window();
    params.push(("query", r#"{app="api"}"#.to_string()));
    let (status, body) = get_json(&server, "/loki/api/v1/query_range", &params).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("kept"), "{body}");
    server.stop().await;
}

/// Pushes `n` JSON lines `{"level":..,"i":..,"msg":"request handled in <i>ms"}` to
/// `{app="heavy"}`, 10 ms apart from `base`, the first `flushed` of them written to
/// segments and the rest left in the head. Levels cycle info, warn, error.
async fn push_heavy(server: &TestServer, base: i64, n: usize, flushed: usize) {
    let levels = ["info", "warn", "error"];
    let line = |i: usize| {
        format!(
            r#"{{"level":"{}","i":{i},"msg":"request handled in {i}ms"}}"#,
            levels[i % 3]
        )
    };
    for (from, to) in [(0, flushed), (flushed, n)] {
        for lo in (from..to).step_by(10_000) {
            let values: Vec<Value> = (lo..to.min(lo + 10_000))
                .map(|i| serde_json::json!([(base + i as i64 * 10_000_000).to_string(), line(i)]))
                .collect();
            let body =
                serde_json::json!({"streams": [{"stream": {"app": "heavy"}, "values": values}]});
            let (status, text) = server.push_json(None, &body).await;
            assert_eq!(status, 204, "{text}");
        }
        if from == 0 && flushed > 0 {
            assert_eq!(server.post_flush().await.0, 204);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_heavy_queries_each_get_their_answer_or_a_timeout() {
    // A time limit well above what the queries need, so a slow machine answers 504
    // instead of hanging the suite.
    let server = TestServer::start(&format!(
        "{CONFIG}  query_timeout: 15s\n  ingestion_rate_mb: 0\n"
    ))
    .await;
    let n = 120_000;
    let base = now_ns() - 25 * 60_000_000_000;
    push_heavy(&server, base, n, 100_000).await;
    let at = base + n as i64 * 10_000_000 + 1;

    // Eight different pipelines (no query reuses another's cached samples), each
    // parsing every line and searching a 2.5 KB line built from it, more at once than
    // the querier runs: sum by level of the lines whose `i` ends in `d`.
    let mut tasks = Vec::new();
    for d in 0..8usize {
        let client = server.client.clone();
        let url = format!("{}/loki/api/v1/query", server.url);
        let query = format!(
            r#"sum by (level) (count_over_time({{app="heavy"}} | json | line_format "{{{{ repeat 100 .msg }}}}" |~ "handled in [0-9]*{d}ms" [1h]))"#
        );
        let params = [("query", query), ("time", at.to_string())];
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).query(&params).send().await.unwrap();
            (d, r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let levels = ["info", "warn", "error"];
    let mut answered = 0;
    for t in tasks {
        let (d, status, body) = t.await.unwrap();
        if status == 504 {
            assert!(body.starts_with("request timed out"), "{d}: {body}");
            continue;
        }
        assert_eq!(status, 200, "{d}: {body}");
        answered += 1;
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut got: Vec<(String, String)> = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let level = s["metric"]["level"].as_str().unwrap().to_string();
                (level, s["value"][1].as_str().unwrap().to_string())
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = levels
            .iter()
            .enumerate()
            .map(|(l, level)| {
                let count = (0..n).filter(|i| i % 10 == d && i % 3 == l).count();
                (level.to_string(), count.to_string())
            })
            .collect();
        want.sort();
        assert_eq!(got, want, "{d}: {body}");
    }
    eprintln!("{answered} of 8 heavy queries answered in time");

    // Healthy afterwards: a count and a search over the same data are right.
    let count = instant(&server, r#"count_over_time({app="heavy"}[1h])"#, at).await;
    assert_eq!(
        count,
        [(n.to_string(), serde_json::json!({"app": "heavy"}))]
    );
    let mut params = window();
    params.push(("query", r#"{app="heavy"} | json | i = 12345"#.to_string()));
    let (status, body) = get_json(&server, "/loki/api/v1/query_range", &params).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let lines: Vec<&str> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap())
        .map(|e| e[1].as_str().unwrap())
        .collect();
    assert_eq!(
        lines,
        [r#"{"level":"info","i":12345,"msg":"request handled in 12345ms"}"#],
        "{body}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_its_time_limit_gets_504_and_the_next_query_is_answered() {
    let server = TestServer::start(&format!(
        "{CONFIG}  query_timeout: 1s\n  max_query_series: 3\ningester:\n  chunk_block_size: 16384\n"
    ))
    .await;
    let n = 20_000;
    let base = now_ns() - 15 * 60_000_000_000;
    push_heavy(&server, base, n, n).await;
    let at = base + n as i64 * 10_000_000 + 1;

    // Every line becomes a 1 MB line before the regex reads it: far more than a second
    // of work on any machine, and the blocks are small, so the query stops soon after.
    let heavy = r#"count_over_time({app="heavy"} | json | line_format "{{ repeat 40000 .msg }}" |~ "handled in [0-9]+ms$" [1h])"#;
    let params = [("query", heavy.to_string()), ("time", at.to_string())];
    let r = server
        .client
        .get(format!("{}/loki/api/v1/query", server.url))
        .query(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; charset=utf-8",
        "Loki's error answers are plain text"
    );
    let body = r.text().await.unwrap();
    assert!(
        body.starts_with(
            "request timed out, decrease the duration of the request or add more label matchers"
        ),
        "{body}"
    );
    assert!(body.contains("query_timeout = 1s"), "{body}");

    // The server answers the next queries, over the same data, correctly.
    let count = instant(&server, r#"count_over_time({app="heavy"}[1h])"#, at).await;
    assert_eq!(
        count,
        [(n.to_string(), serde_json::json!({"app": "heavy"}))]
    );
    let params = [
        ("query", r#"{app="heavy"}"#.to_string()),
        ("start", base.to_string()),
        ("end", at.to_string()),
        ("limit", "2".to_string()),
    ];
    let (status, body) = get_json(&server, "/loki/api/v1/query_range", &params).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let values = v["data"]["result"][0]["values"].as_array().unwrap();
    let lines: Vec<&str> = values.iter().map(|e| e[1].as_str().unwrap()).collect();
    assert_eq!(
        lines,
        [
            r#"{"level":"warn","i":19999,"msg":"request handled in 19999ms"}"#,
            r#"{"level":"info","i":19998,"msg":"request handled in 19998ms"}"#
        ]
    );

    // max_query_series: a range query with more series than allowed in a step is
    // refused with Loki's message; fewer series, and instant queries, are answered.
    let range = |query: &str| {
        vec![
            ("query", query.to_string()),
            ("start", (at - 60_000_000_000).to_string()),
            ("end", at.to_string()),
            ("step", "30s".to_string()),
        ]
    };
    let by_i = r#"sum by (i) (count_over_time({app="heavy"} | json | i > 19995 [1h]))"#;
    let (status, body) = get_json(&server, "/loki/api/v1/query_range", &range(by_i)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.starts_with("maximum number of series (3) reached for a single query"),
        "{body}"
    );
    let by_level = r#"sum by (level) (count_over_time({app="heavy"} | json | i > 19995 [1h]))"#;
    let series = range_matrix(&server, by_level, at - 60_000_000_000, at, "30s").await;
    assert_eq!(series.len(), 3, "{series:?}");
    let samples = instant(&server, by_i, at).await;
    assert_eq!(samples.len(), 4, "{samples:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lode_cli_queries_a_live_server() {
    let server = TestServer::start(CONFIG).await;
    push_lines(
        &server,
        &serde_json::json!({"app": "cli", "env": "test"}),
        &["first line", "second line"],
    )
    .await;
    let url = server.url.clone();
    let run = move |args: Vec<&'static str>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_lode"))
                .args(&args)
                .args(["--addr", &url])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "lode {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
    };
    let raw = run(vec![
        "query",
        r#"{app="cli"}"#,
        "--output",
        "raw",
        "--since",
        "1h",
    ])
    .await
    .unwrap();
    assert_eq!(raw, "second line\nfirst line\n");
    let forward = run(vec![
        "query",
        r#"{app="cli"}"#,
        "-o",
        "raw",
        "--forward",
        "--limit",
        "1",
    ])
    .await
    .unwrap();
    assert_eq!(forward, "first line\n");
    let table = run(vec![
        "query",
        r#"count_over_time({app="cli"}[1h])"#,
        "--instant",
    ])
    .await
    .unwrap();
    assert!(table.starts_with(r#"{app="cli", env="test"}"#), "{table}");
    assert!(table.trim_end().ends_with('2'), "{table}");
    let labels = run(vec!["labels"]).await.unwrap();
    assert_eq!(labels, "app\nenv\n");
    let series = run(vec!["series", r#"{env="test"}"#]).await.unwrap();
    assert_eq!(series, "{app=\"cli\", env=\"test\"}\n");
    server.stop().await;
}

/// Runs the real `lode` binary with `args` and `env` (logcli's `LOKI_*` variables of
/// the test's own environment removed first).
async fn lode_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lode"))
            .args(&args)
            .env_remove("LOKI_ADDR")
            .env_remove("LOKI_ORG_ID")
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Stdout of a `lode` run that must succeed.
fn cli_stdout(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "lode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Unix nanoseconds as the CLI prints them: RFC3339 with nanoseconds, UTC.
fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp(ns / 1_000_000_000, (ns % 1_000_000_000) as u32)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lode_cli_honours_since_from_and_to_and_prints_every_output_form() {
    let server = TestServer::start(CONFIG).await;
    let sec = 1_000_000_000_i64;
    // A whole minute about ten minutes ago, so metric steps fall on known points.
    let t = (now_ns() - 600 * sec) / (60 * sec) * (60 * sec);
    let body = serde_json::json!({"streams": [
        {"stream": {"app": "cli", "env": "old"}, "values": [[(now_ns() - 7200 * sec).to_string(), "two hours ago"]]},
        {"stream": {"app": "cli", "env": "test"}, "values": [
            [(t + 10 * sec).to_string(), "one"],
            [(t + 20 * sec).to_string(), "two"],
            [(t + 70 * sec).to_string(), "three"],
        ]},
    ]});
    assert_eq!(server.push_json(None, &body).await.0, 204);
    let url = server.url.as_str();
    let run = |args: Vec<String>| async move {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--addr", url]);
        cli_stdout(lode_cli(&all, &[]).await)
    };
    let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let sel = r#"{app="cli"}"#;

    // --since: the window ends now and reaches back that far.
    let recent = run(strings(&[
        "query",
        sel,
        "-o",
        "raw",
        "--forward",
        "--since",
        "1h",
    ]))
    .await;
    assert_eq!(recent, "one\ntwo\nthree\n");
    let all = run(strings(&[
        "query",
        sel,
        "-o",
        "raw",
        "--forward",
        "--since",
        "3h",
    ]))
    .await;
    assert_eq!(all, "two hours ago\none\ntwo\nthree\n");

    // --from (RFC3339) is inclusive, --to (unix ns) exclusive.
    let (from, to) = (rfc3339(t + 10 * sec), (t + 70 * sec).to_string());
    let range = |output: &str| {
        strings(&[
            "query",
            sel,
            "--from",
            from.as_str(),
            "--to",
            to.as_str(),
            "--output",
            output,
        ])
    };
    assert_eq!(run(range("raw")).await, "two\none\n");
    let default = run(range("default")).await;
    assert_eq!(
        default,
        format!(
            "{} {{app=\"cli\", env=\"test\"}} two\n{} {{app=\"cli\", env=\"test\"}} one\n",
            rfc3339(t + 20 * sec),
            rfc3339(t + 10 * sec)
        )
    );
    let jsonl = run(range("jsonl")).await;
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            serde_json::json!({"timestamp": rfc3339(t + 20 * sec), "labels": {"app": "cli", "env": "test"}, "line": "two"}),
            serde_json::json!({"timestamp": rfc3339(t + 10 * sec), "labels": {"app": "cli", "env": "test"}, "line": "one"}),
        ]
    );

    // A range metric query: a table of points per series, and jsonl samples.
    let metric = |output: &str| {
        strings(&[
            "query",
            r#"count_over_time({app="cli", env="test"}[1m])"#,
            "--from",
            rfc3339(t).as_str(),
            "--to",
            rfc3339(t + 120 * sec).as_str(),
            "--step",
            "60s",
            "-o",
            output,
        ])
    };
    let table = run(metric("default")).await;
    assert_eq!(
        table,
        format!(
            "{{app=\"cli\", env=\"test\"}}\n  {}  2\n  {}  1\n",
            rfc3339(t + 60 * sec),
            rfc3339(t + 120 * sec)
        )
    );
    let samples: Vec<Value> = run(metric("jsonl"))
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let metric_labels = serde_json::json!({"app": "cli", "env": "test"});
    assert_eq!(
        samples,
        [
            serde_json::json!({"metric": metric_labels, "timestamp": (t / sec + 60), "value": "2"}),
            serde_json::json!({"metric": metric_labels, "timestamp": (t / sec + 120), "value": "1"}),
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lode_cli_tails_a_live_server_from_since() {
    use std::io::BufRead;
    let server = TestServer::start(CONFIG).await;
    let sec = 1_000_000_000_i64;
    let now = now_ns();
    let body = serde_json::json!({"streams": [{"stream": {"app": "tailcli"}, "values": [
        [(now - 1800 * sec).to_string(), "half an hour ago"],
        [(now - 10 * sec).to_string(), "ten seconds ago"],
    ]}]});
    assert_eq!(server.push_json(None, &body).await.0, 204);

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lode"))
        .args([
            "query",
            r#"{app="tailcli"}"#,
            "--tail",
            "--since",
            "5m",
            "-o",
            "raw",
            "--addr",
            &server.url,
        ])
        .env_remove("LOKI_ADDR")
        .env_remove("LOKI_ORG_ID")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a tailed line within 10s")
            .expect("lode still running")
    }
    // The replay covers --since (5m), not the server's default hour.
    assert_eq!(next(&mut rx).await, "ten seconds ago");
    let body = serde_json::json!({"streams": [{"stream": {"app": "tailcli"}, "values": [
        [now_ns().to_string(), "pushed while tailing"],
    ]}]});
    assert_eq!(server.push_json(None, &body).await.0, 204);
    assert_eq!(next(&mut rx).await, "pushed while tailing");
    child.kill().unwrap();
    child.wait().unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lode_cli_takes_tenant_and_address_from_flags_or_logcli_variables() {
    let server = TestServer::start(&format!("auth_enabled: true\n{CONFIG}")).await;
    let base = now_ns() - 5_000_000_000;
    for (tenant, line) in [("team-a", "line of a"), ("team-b", "line of b")] {
        let body = serde_json::json!({"streams": [{"stream": {"app": "shared"}, "values": [[base.to_string(), line]]}]});
        assert_eq!(server.push_json(Some(tenant), &body).await.0, 204);
    }
    let url = server.url.as_str();
    let query = ["query", r#"{app="shared"}"#, "-o", "raw"];

    let a = lode_cli(
        &[&query[..], &["--org-id", "team-a", "--addr", url]].concat(),
        &[],
    )
    .await;
    assert_eq!(cli_stdout(a), "line of a\n");
    let b = lode_cli(&query, &[("LOKI_ADDR", url), ("LOKI_ORG_ID", "team-b")]).await;
    assert_eq!(cli_stdout(b), "line of b\n");
    // The flag wins over the variable, as in logcli.
    let a = lode_cli(
        &[&query[..], &["--org-id", "team-a"]].concat(),
        &[("LOKI_ADDR", url), ("LOKI_ORG_ID", "team-b")],
    )
    .await;
    assert_eq!(cli_stdout(a), "line of a\n");
    let labels = lode_cli(
        &["labels"],
        &[("LOKI_ADDR", url), ("LOKI_ORG_ID", "team-b")],
    )
    .await;
    assert_eq!(cli_stdout(labels), "app\n");

    // Without a tenant the server refuses, and the CLI says why.
    let none = lode_cli(&[&query[..], &["--addr", url]].concat(), &[]).await;
    assert!(!none.status.success());
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("no org id"),
        "{stderr}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detected_fields_types_json_logfmt_and_metadata_fields() {
    let server = TestServer::start(CONFIG).await;
    let base = now_ns() - 5_000_000_000;
    let body = serde_json::json!({"streams": [{
        "stream": {"app": "mixed"},
        "values": [
            [base.to_string(), r#"{"status":200,"took":"15ms"}"#, {"trace_id": "a1"}],
            [(base + 1).to_string(), r#"{"status":503,"took":"1.5s"}"#, {"trace_id": "b2"}],
            [(base + 2).to_string(), "level=warn ratio=0.5"],
        ]
    }]});
    assert_eq!(server.push_json(None, &body).await.0, 204);
    let mut params = window();
    params.push(("query", r#"{app="mixed"}"#.to_string()));
    let (status, body) = get_json(&server, "/loki/api/v1/detected_fields", &params).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let field = |name: &str| {
        v["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["label"] == name)
            .unwrap_or_else(|| panic!("{name} missing in {body}"))
            .clone()
    };
    assert_eq!(
        field("status"),
        serde_json::json!({"label": "status", "type": "int", "cardinality": 2, "parsers": ["json"]})
    );
    assert_eq!(field("took")["type"], "duration");
    assert_eq!(field("level")["parsers"], serde_json::json!(["logfmt"]));
    assert_eq!(field("ratio")["type"], "float");
    assert_eq!(field("trace_id")["parsers"], Value::Null);
    assert_eq!(v["limit"], 1000);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_never_return_entries_past_retention() {
    let server = TestServer::start(
        r#"
limits_config:
  discover_service_name: []
  discover_log_levels: false
  reject_old_samples: false
  retention_period: 24h
  max_query_length: 0s
"#,
    )
    .await;
    let now = now_ns();
    let two_days = 2 * 86_400_000_000_000_i64;
    let body = serde_json::json!({"streams": [
        {"stream": {"app": "ret"}, "values": [[(now - two_days).to_string(), "expired"]]},
        {"stream": {"app": "ret"}, "values": [[(now - 1_000_000_000).to_string(), "fresh"]]},
    ]});
    assert_eq!(server.push_json(None, &body).await.0, 204);
    let params = vec![
        ("query", r#"{app="ret"}"#.to_string()),
        ("start", (now - 3 * 86_400_000_000_000_i64).to_string()),
        ("end", (now + 1).to_string()),
    ];
    let (status, body) = get_json(&server, "/loki/api/v1/query_range", &params).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let lines: Vec<&str> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap())
        .map(|e| e[1].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["fresh"], "{body}");
    server.stop().await;
}

/// `(value, labels)` of every sample of an instant query's vector.
async fn instant(server: &TestServer, query: &str, time_ns: i64) -> Vec<(String, Value)> {
    let params = [("query", query.to_string()), ("time", time_ns.to_string())];
    let (status, body) = get_json(server, "/loki/api/v1/query", &params).await;
    assert_eq!(status, 200, "{query}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<(String, Value)> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["value"][1].as_str().unwrap().to_string(),
                s["metric"].clone(),
            )
        })
        .collect();
    out.sort_by_key(|(_, m)| m.to_string());
    out
}

/// A range query's matrix, series sorted by labels.
async fn range_matrix(
    server: &TestServer,
    query: &str,
    start_ns: i64,
    end_ns: i64,
    step: &str,
) -> Vec<Value> {
    let params = [
        ("query", query.to_string()),
        ("start", start_ns.to_string()),
        ("end", end_ns.to_string()),
        ("step", step.to_string()),
    ];
    let (status, body) = get_json(server, "/loki/api/v1/query_range", &params).await;
    assert_eq!(status, 200, "{query}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out = v["data"]["result"].as_array().unwrap().clone();
    out.sort_by_key(|s| s["metric"].to_string());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_from_block_summaries_equal_counts_from_reading_every_line() {
    // Small blocks so a window holds whole blocks and cuts others; level discovery on,
    // so every line carries `detected_level` metadata that splits the series.
    let server = TestServer::start(
        r#"
limits_config:
  discover_service_name: []
ingester:
  chunk_block_size: 1024
"#,
    )
    .await;
    let base = now_ns() - 600_000_000_000;
    let levels = ["error", "info", "info", "warn", "debug"];
    let values: Vec<Value> = (0..1500)
        .map(|i: i64| {
            let level = levels[i as usize % levels.len()];
            let line = format!(
                "level={level} msg=\"request {i}\" {}",
                "x".repeat((i % 7) as usize)
            );
            serde_json::json!([(base + i * 200_000_000).to_string(), line])
        })
        .collect();
    let body = serde_json::json!({"streams": [{"stream": {"app": "cnt"}, "values": values}]});
    assert_eq!(server.push_json(None, &body).await.0, 204);
    assert_eq!(server.post_flush().await.0, 204);
    // Late lines between the stored ones: a second segment whose blocks overlap the
    // first's in time.
    let late: Vec<Value> = (0..500)
        .map(|i: i64| {
            let level = levels[i as usize % levels.len()];
            let line = format!("level={level} msg=\"late {i}\"");
            serde_json::json!([(base + i * 600_000_000 + 100_000_000).to_string(), line])
        })
        .collect();
    let body = serde_json::json!({"streams": [{"stream": {"app": "cnt"}, "values": late}]});
    assert_eq!(server.push_json(None, &body).await.0, 204);
    assert_eq!(server.post_flush().await.0, 204);

    let end = base + 1500 * 200_000_000;
    // The same aggregation with a filter that keeps every line reads every line.
    for (fast, slow, at) in [
        (
            r#"count_over_time({app="cnt"}[1h])"#,
            r#"count_over_time({app="cnt"} != "absent-zq" [1h])"#,
            end,
        ),
        (
            r#"sum by (detected_level) (bytes_over_time({app="cnt"}[1h]))"#,
            r#"sum by (detected_level) (bytes_over_time({app="cnt"} != "absent-zq" [1h]))"#,
            end,
        ),
        (
            r#"sum(rate({app="cnt"}[1h]))"#,
            r#"sum(rate({app="cnt"} != "absent-zq" [1h]))"#,
            end,
        ),
        // A 100 s window ending mid-data: whole blocks inside, cut blocks at both edges.
        (
            r#"count_over_time({app="cnt"}[100s])"#,
            r#"count_over_time({app="cnt"} != "absent-zq" [100s])"#,
            base + 170_123_456_789,
        ),
        (
            r#"bytes_rate({app="cnt"}[100s])"#,
            r#"bytes_rate({app="cnt"} != "absent-zq" [100s])"#,
            base + 170_123_456_789,
        ),
    ] {
        let got = instant(&server, fast, at).await;
        assert!(!got.is_empty(), "{fast}");
        assert_eq!(got, instant(&server, slow, at).await, "{fast} vs {slow}");
    }
    let counts = instant(&server, r#"count_over_time({app="cnt"}[1h])"#, end).await;
    let by_level: Vec<(String, String)> = counts
        .iter()
        .map(|(v, m)| (m["detected_level"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    assert_eq!(
        by_level,
        [
            ("debug", "400"),
            ("error", "400"),
            ("info", "800"),
            ("warn", "400")
        ]
        .map(|(l, v)| (l.to_string(), v.to_string()))
    );

    // And the whole blocks really were counted, not read.
    let tenant = lode::tenant::TenantId::new("fake").unwrap();
    let expr = query_lang::parse_expr(r#"count_over_time({app="cnt"}[1h])"#).unwrap();
    let (_, processed) = server
        .state()
        .querier
        .query(&tenant, expr, query_lang::eval::QueryParams::instant(end))
        .await
        .unwrap();
    assert!(processed.counted_groups > 0, "{processed:?}");
    assert_eq!(processed.lines, 2000);

    // Range queries count every block from its columns (or its summary when it lies in
    // one span between window edges): the same matrices as reading every line, for
    // windows longer and shorter than the step, with an offset, and with unflushed
    // lines in the head overlapping the last stored blocks.
    let unflushed: Vec<Value> = (0..50)
        .map(|i: i64| {
            let line = format!("level=info msg=\"head {i}\"");
            serde_json::json!([(end - 20_000_000_000 + i * 700_000_000).to_string(), line])
        })
        .collect();
    let body = serde_json::json!({"streams": [{"stream": {"app": "cnt"}, "values": unflushed}]});
    assert_eq!(server.push_json(None, &body).await.0, 204);
    for (query, step) in [
        (r#"count_over_time({app="cnt"}[1m])"#, "7s"),
        (
            r#"sum by (detected_level) (count_over_time({app="cnt"}[10s]))"#,
            "60s",
        ),
        (
            r#"sum(bytes_over_time({app="cnt"}[45s] offset 13s))"#,
            "20s",
        ),
        (r#"sum by (app) (rate({app="cnt"}[5m]))"#, "60s"),
    ] {
        let slow = query.replace("[", r#"!= "absent-zq" ["#);
        let (from, to) = (base - 30_000_000_000, end + 60_000_000_000);
        let got = range_matrix(&server, query, from, to, step).await;
        assert!(!got.is_empty(), "{query}");
        assert_eq!(
            got,
            range_matrix(&server, &slow, from, to, step).await,
            "{query}"
        );
    }
    // Stored blocks were counted (no line of theirs read); the head's lines were read.
    let expr = query_lang::parse_expr(r#"count_over_time({app="cnt"}[1m])"#).unwrap();
    let params = query_lang::eval::QueryParams::range(base, end, 7_000_000_000);
    let (_, processed) = server
        .state()
        .querier
        .query(&tenant, expr, params)
        .await
        .unwrap();
    assert!(processed.counted_groups > 0, "{processed:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_of_many_streams_cut_by_window_edges_equal_reading_every_line() {
    // Blocks of every stream straddle the window edges, so each stream's are counted from
    // their columns, all streams' at once: each count must land in its own stream, first
    // read from the blocks and then again from the cached count columns.
    let server = TestServer::start(
        r#"
limits_config:
  discover_service_name: []
ingester:
  chunk_block_size: 2048
"#,
    )
    .await;
    let base = now_ns() - 900_000_000_000;
    let levels = ["error", "info", "warn"];
    for (s, lines) in [("a", 700i64), ("b", 1100), ("c", 300), ("d", 900)] {
        let values: Vec<Value> = (0..lines)
            .map(|i| {
                let level = levels[(i as usize * 7 + s.len()) % levels.len()];
                let line = format!(
                    "level={level} stream={s} n={i} {}",
                    "y".repeat((i % 5) as usize)
                );
                serde_json::json!([(base + i * 600_000_000).to_string(), line])
            })
            .collect();
        let body = serde_json::json!({"streams": [{"stream": {"app": "many", "shard": s}, "values": values}]});
        assert_eq!(server.push_json(None, &body).await.0, 204);
    }
    assert_eq!(server.post_flush().await.0, 204);
    let at = base + 250_500_000_000;
    for round in ["cold", "cached"] {
        for query in [
            r#"count_over_time({app="many"}[77s])"#,
            r#"sum by (shard) (bytes_over_time({app="many"}[3m]))"#,
            r#"sum by (shard, detected_level) (rate({app="many"}[100s]))"#,
        ] {
            let slow = query.replace("[", r#"!= "absent-zq" ["#);
            let got = instant(&server, query, at).await;
            assert!(got.len() >= 4, "{round}: {query}: {got:?}");
            assert_eq!(got, instant(&server, &slow, at).await, "{round}: {query}");
            let (from, to) = (base + 30_000_000_000, base + 700_000_000_000);
            let got = range_matrix(&server, query, from, to, "17s").await;
            assert_eq!(
                got,
                range_matrix(&server, &slow, from, to, "17s").await,
                "{round}: {query}"
            );
        }
    }
    assert!(server.state().querier.storage().cached_count_bytes() > 0);
    server.stop().await;
}

/// GET `path` as `tenant`.
async fn get_as(
    server: &TestServer,
    tenant: &str,
    path: &str,
    params: &[(&str, String)],
) -> (u16, String) {
    let r = server
        .client
        .get(format!("{}{path}", server.url))
        .header("X-Scope-OrgID", tenant)
        .query(params)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_and_approx_topk_answer_only_tenants_that_enable_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runtime.yaml");
    std::fs::write(
        &file,
        "overrides:\n  on:\n    enable_multi_variant_queries: true\n    shard_aggregations: [approx_topk]\n",
    )
    .unwrap();
    let server = TestServer::start(&format!(
        "auth_enabled: true\nruntime_config:\n  file: {}\n{CONFIG}",
        file.display()
    ))
    .await;
    let base = now_ns() - 10_000_000_000;
    for tenant in ["on", "off"] {
        let body = serde_json::json!({"streams": [
            {"stream": {"app": "api"}, "values": [
                [base.to_string(), "keep a"], [(base + 1).to_string(), "drop"],
                [(base + 2).to_string(), "keep a"], [(base + 3).to_string(), "keep a"]]},
            {"stream": {"app": "web"}, "values": [[base.to_string(), "keep b"]]}
        ]});
        let (status, text) = server.push_json(Some(tenant), &body).await;
        assert_eq!(status, 204, "{text}");
    }
    let variants = r#"variants(count_over_time({app="x"}[1m]), sum(bytes_over_time({app="x"}[1m]))) of ({app=~"api|web"} |= "keep" [1m])"#;
    let approx = r#"approx_topk(1, sum by (app) (count_over_time({app=~".+"}[1m])))"#;
    let now = now_ns().to_string();
    let instant = |query: &str| vec![("query", query.to_string()), ("time", now.clone())];

    // Off by default, with Loki's answers.
    let (status, body) = get_as(&server, "off", "/loki/api/v1/query", &instant(variants)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("multi variant queries are disabled for this instance"),
        "{body}"
    );
    let (status, body) = get_as(&server, "off", "/loki/api/v1/query", &instant(approx)).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("approx_topk is not enabled. See -limits.shard_aggregations"),
        "{body}"
    );

    // Enabled: one read, each series labelled with its variant.
    let (status, body) = get_as(&server, "on", "/loki/api/v1/query", &instant(variants)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut got: Vec<(String, String, String)> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let label = |k: &str| s["metric"][k].as_str().unwrap_or("").to_string();
            (
                label("__variant__"),
                label("app"),
                s["value"][1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, String, String)> =
        [("0", "api", "3"), ("0", "web", "1"), ("1", "", "24")]
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
    assert_eq!(got, want, "{body}");

    // approx_topk: answered (exactly) for instant queries, refused for range queries.
    let (status, body) = get_as(&server, "on", "/loki/api/v1/query", &instant(approx)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let result = v["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{body}");
    assert_eq!(result[0]["metric"]["app"], "api");
    assert_eq!(result[0]["value"][1], "4");
    let mut range = window();
    range.push(("query", approx.to_string()));
    range.push(("step", "60".to_string()));
    let (status, body) = get_as(&server, "on", "/loki/api/v1/query_range", &range).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("count min sketches are only supported on instant queries"),
        "{body}"
    );
    server.stop().await;
}
