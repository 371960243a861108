//! The index endpoints and helpers Grafana, Logs Drilldown and logcli call besides queries:
//! `index/stats`, `index/volume`, `index/volume_range`, `detected_labels` and
//! `format_query`, over HTTP against a live server, with answers worked out by hand from
//! what was pushed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

#[path = "common/mod.rs"]
mod common;

use serde_json::{json, Value};

use common::TestServer;

/// The data below is from 2026-01-01: old samples accepted, discovery off so streams are
/// exactly what was pushed.
const CONFIG: &str = common::OLD_DATA_CONFIG;

/// 2026-01-01T00:00:00Z in seconds.
const T0: i64 = 1_767_225_600;
const NS: i64 = 1_000_000_000;

/// A line of `n` bytes.
fn line(n: usize) -> String {
    "x".repeat(n)
}

/// Pushes `(labels, [(seconds after T0, line bytes)])` streams.
async fn push(server: &TestServer, streams: &[(Value, &[(i64, usize)])]) {
    let streams: Vec<Value> = streams
        .iter()
        .map(|(labels, entries)| {
            let values: Vec<Value> = entries
                .iter()
                .map(|(s, n)| json!([((T0 + s) * NS).to_string(), line(*n)]))
                .collect();
            json!({"stream": labels, "values": values})
        })
        .collect();
    let (status, text) = server.push_json(None, &json!({ "streams": streams })).await;
    assert_eq!(status, 204, "push failed: {text}");
}

async fn get(server: &TestServer, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    server.get_value(path, params).await
}

/// Three streams in the first two minutes of the day: `api/prod` 3 × 100 bytes at 0 s,
/// 10 s and 70 s; `api/dev` 50 bytes at 20 s; `web/prod` 2 × 30 bytes at 5 s and 65 s.
async fn volume_server() -> TestServer {
    let server = TestServer::start(CONFIG).await;
    push(
        &server,
        &[
            (
                json!({"app": "api", "env": "prod"}),
                &[(0, 100), (10, 100), (70, 100)],
            ),
            (json!({"app": "api", "env": "dev"}), &[(20, 50)]),
            (json!({"app": "web", "env": "prod"}), &[(5, 30), (65, 30)]),
        ],
    )
    .await;
    server
}

/// `[(metric, value)]` of a vector result, in the order given.
fn vector(body: &Value) -> Vec<(Value, Value)> {
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(body["data"]["resultType"], "vector", "{body}");
    body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["metric"].clone(), s["value"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_volume_answers_bytes_per_series_as_a_sorted_vector_at_end() {
    let server = volume_server().await;
    let start = T0.to_string();
    let end = (T0 + 120).to_string();
    let range = [("start", start.as_str()), ("end", end.as_str())];
    let volume = |extra: Vec<(&'static str, &'static str)>| {
        let mut p: Vec<(&str, &str)> = range.to_vec();
        p.extend(extra);
        p
    };

    // Grouped by the selector's labels, largest first, bytes as strings, time = end.
    let (status, body) = get(
        &server,
        "/loki/api/v1/index/volume",
        &volume(vec![("query", r#"{app=~".+"}"#)]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        vector(&body),
        vec![
            (json!({"app": "api"}), json!([T0 + 120, "350"])),
            (json!({"app": "web"}), json!([T0 + 120, "60"])),
        ]
    );

    // targetLabels regroups; limit keeps the largest.
    let (_, body) = get(
        &server,
        "/loki/api/v1/index/volume",
        &volume(vec![("query", r#"{app=~".+"}"#), ("targetLabels", "env")]),
    )
    .await;
    assert_eq!(
        vector(&body),
        vec![
            (json!({"env": "prod"}), json!([T0 + 120, "360"])),
            (json!({"env": "dev"}), json!([T0 + 120, "50"])),
        ]
    );
    let (_, body) = get(
        &server,
        "/loki/api/v1/index/volume",
        &volume(vec![
            ("query", r#"{app=~".+"}"#),
            ("targetLabels", "app,env"),
            ("limit", "1"),
        ]),
    )
    .await;
    assert_eq!(
        vector(&body),
        vec![(
            json!({"app": "api", "env": "prod"}),
            json!([T0 + 120, "300"])
        )]
    );

    // aggregateBy=labels: one series per label name, `{"<name>": ""}`; ties by name.
    let (_, body) = get(
        &server,
        "/loki/api/v1/index/volume",
        &volume(vec![
            ("query", r#"{env="prod"}"#),
            ("targetLabels", "app,env"),
            ("aggregateBy", "labels"),
        ]),
    )
    .await;
    assert_eq!(
        vector(&body),
        vec![
            (json!({"app": ""}), json!([T0 + 120, "360"])),
            (json!({"env": ""}), json!([T0 + 120, "360"])),
        ]
    );

    // A bad aggregateBy or a metric query is a 400 that says what to send.
    let (status, body) = get(
        &server,
        "/loki/api/v1/index/volume",
        &volume(vec![("query", r#"{app="api"}"#), ("aggregateBy", "pods")]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.as_str().unwrap().contains("aggregateBy"), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_volume_range_answers_a_matrix_of_step_buckets() {
    let server = volume_server().await;
    let start = T0.to_string();
    let end = (T0 + 120).to_string();
    let (status, body) = get(
        &server,
        "/loki/api/v1/index/volume_range",
        &[
            ("query", r#"{app=~".+"}"#),
            ("start", &start),
            ("end", &end),
            ("step", "60"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["resultType"], "matrix", "{body}");
    // A point at t holds the bytes of (t - step, t].
    assert_eq!(
        body["data"]["result"],
        json!([
            {"metric": {"app": "api"},
             "values": [[T0, "100"], [T0 + 60, "150"], [T0 + 120, "100"]]},
            {"metric": {"app": "web"},
             "values": [[T0 + 60, "30"], [T0 + 120, "30"]]},
        ])
    );

    // Loki's quirk: when every series has a single point the answer is a vector.
    let (_, body) = get(
        &server,
        "/loki/api/v1/index/volume_range",
        &[
            ("query", r#"{app=~".+"}"#),
            ("start", &(T0 + 1).to_string()),
            ("end", &end),
            ("step", "1h"),
        ],
    )
    .await;
    assert_eq!(
        vector(&body),
        vec![
            (json!({"app": "api"}), json!([T0 + 120, "250"])),
            (json!({"app": "web"}), json!([T0 + 120, "60"])),
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_stats_count_stream_days_twice_in_whole_kib_from_heads_and_segments() {
    // One stream over two UTC days: 1536 bytes on the first (1.5 KiB rounds to 2), 511 on
    // the second (rounds to 0); a second stream of 600 bytes (1 KiB) on the first day.
    let server = TestServer::start(CONFIG).await;
    let streams: [(Value, &[(i64, usize)]); 2] = [
        (
            json!({"app": "api"}),
            &[(0, 1000), (30, 536), (86_400 + 10, 500), (86_400 + 20, 11)],
        ),
        (json!({"app": "web"}), &[(40, 600)]),
    ];
    push(&server, &streams).await;
    let start = T0.to_string();
    let end = (T0 + 2 * 86_400).to_string();
    let stats = |server: &TestServer, query: &'static str| {
        let (start, end) = (start.clone(), end.clone());
        let client = server.client.clone();
        let url = format!("{}/loki/api/v1/index/stats", server.url);
        async move {
            let r = client
                .get(url)
                .query(&[("query", query), ("start", &start), ("end", &end)])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let want_all = json!({"streams": 2, "chunks": 6, "bytes": 2 * 3 * 1024, "entries": 10});
    let want_api = json!({"streams": 1, "chunks": 4, "bytes": 2 * 2 * 1024, "entries": 8});
    assert_eq!(stats(&server, r#"{app=~".+"}"#).await, want_all, "heads");
    assert_eq!(stats(&server, r#"{app="api"}"#).await, want_api, "heads");

    // The same answer from segments after a restart (the graceful stop flushed), and
    // from a stream-day held partly in a segment and partly in a head.
    let server = {
        let dir = server.stop().await;
        TestServer::restart(CONFIG, dir).await
    };
    assert_eq!(stats(&server, r#"{app=~".+"}"#).await, want_all, "segments");
    push(&server, &[(json!({"app": "web"}), &[(50, 1)])]).await;
    let want_mixed = json!({"streams": 2, "chunks": 6, "bytes": 2 * 3 * 1024, "entries": 12});
    assert_eq!(
        stats(&server, r#"{app=~".+"}"#).await,
        want_mixed,
        "segments and heads"
    );
    let (status, body) = get(&server, "/loki/api/v1/index/stats", &[("start", "0")]).await;
    assert_eq!(status, 400);
    assert!(body.as_str().unwrap().contains("query"), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detected_labels_come_from_the_index_without_id_like_labels() {
    let server = TestServer::start(CONFIG).await;
    let uuid = |n: u8| format!("0b0f6c9e-3d6a-4c1e-9a51-2f4f7c1d9e1{n}");
    let streams: Vec<(Value, &[(i64, usize)])> = vec![
        (
            json!({"app": "api", "namespace": "prod", "port": "8080",
                   "request_id": uuid(1), "canary": "0"}),
            &[(0, 10)],
        ),
        (
            json!({"app": "api", "namespace": "prod", "port": "9090",
                   "request_id": uuid(2), "canary": "1"}),
            &[(1, 10)],
        ),
        (
            json!({"app": "web", "namespace": "prod", "port": "3100",
                   "request_id": uuid(3), "canary": "0"}),
            &[(2, 10)],
        ),
        // Numbers everywhere, yet `pod` is always offered.
        (json!({"app": "db", "pod": "7"}), &[(3, 10)]),
    ];
    push(&server, &streams).await;
    let start = T0.to_string();
    let end = (T0 + 60).to_string();
    let (status, body) = get(
        &server,
        "/loki/api/v1/detected_labels",
        &[("start", &start), ("end", &end)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Ports and request ids look like ids and are left out; 0/1 is a flag and kept.
    assert_eq!(
        body,
        json!({"detectedLabels": [
            {"label": "app", "cardinality": 3},
            {"label": "canary", "cardinality": 2},
            {"label": "namespace", "cardinality": 1},
            {"label": "pod", "cardinality": 1},
        ]})
    );
    let (_, body) = get(
        &server,
        "/loki/api/v1/detected_labels",
        &[
            ("query", r#"{app="api"}"#),
            ("start", &start),
            ("end", &end),
        ],
    )
    .await;
    assert_eq!(
        body,
        json!({"detectedLabels": [
            {"label": "app", "cardinality": 1},
            {"label": "canary", "cardinality": 2},
            {"label": "namespace", "cardinality": 1},
        ]})
    );
    // Nothing selected: Loki's empty answer is `{}`, without the list.
    let (status, body) = get(
        &server,
        "/loki/api/v1/detected_labels",
        &[
            ("query", r#"{app="none"}"#),
            ("start", &start),
            ("end", &end),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_query_prints_the_canonical_query_or_says_where_it_fails() {
    let server = TestServer::start(CONFIG).await;
    let (status, body) = get(
        &server,
        "/loki/api/v1/format_query",
        &[(
            "query",
            r#"sum by(app)(rate({app="api",env=~"p.*"}|="err"|json|status>=500[5m]))"#,
        )],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "success",
               "data": r#"sum by (app) (rate({app="api", env=~"p.*"} |= "err" | json | status>=500 [5m]))"#})
    );
    // POST form works the same.
    let r = server
        .client
        .post(format!("{}/loki/api/v1/format_query", server.url))
        .form(&[("query", r#"{app="api"}|logfmt"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "success", "data": r#"{app="api"} | logfmt"#})
    );
    let (status, body) = get(
        &server,
        "/loki/api/v1/format_query",
        &[("query", r#"{app="api""#)],
    )
    .await;
    // As Loki answers this endpoint: a JSON body with status `invalid-query`.
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"status": "invalid-query",
               "error": "parse error at line 1, col 11: syntax error: unexpected $end, expecting } or ,"})
    );
    let (status, body) = get(&server, "/loki/api/v1/format_query", &[]).await;
    assert_eq!(status, 400);
    assert_eq!(body["status"], "invalid-query", "{body}");
    server.stop().await;
}
