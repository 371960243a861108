//! End to end with the real Debian `prometheus` and its remote-write receiver: a
//! recording rule's series appears in Prometheus's query API with the value the same
//! LogQL query returns from Lode's `/loki/api/v1/query` at the sample's timestamp.

mod common;
mod ruler_support;

use std::time::Duration;

use common::{now_ns, TestServer};
use ruler_support::{access_log_push, eventually, Daemon, RuleDirs};
use serde_json::Value;

const EXPR: &str = r#"sum by (app) (count_over_time({app="api"} | json | status >= 500 [1m]))"#;

#[tokio::test]
async fn recorded_series_reach_prometheus_with_the_values_lode_returns() {
    let dirs = RuleDirs::new();
    let prom = Daemon::prometheus(dirs.dir.path()).await;
    dirs.write(
        "fake",
        "api.yaml",
        &format!(
            "groups:\n  - name: api-records\n    interval: 1s\n    rules:\n      - record: app:log_5xx:count1m\n        expr: '{EXPR}'\n        labels:\n          source: lode\n"
        ),
    );
    let server = TestServer::start(&dirs.config(&format!(
        "  remote_write:\n    enabled: true\n    clients:\n      prom:\n        url: {}/api/v1/write\n        min_backoff: 100ms",
        prom.url
    )))
    .await;
    // 40 lines, every 4th a 500: ten 5xx lines within the last minute.
    let (status, body) = server
        .push_json(None, &access_log_push("api", 40, 4, now_ns()))
        .await;
    assert_eq!(status, 204, "{body}");

    let client = reqwest::Client::new();
    let sample = eventually(
        "Prometheus to hold the recorded series",
        Duration::from_secs(20),
        || async {
            let v: Value = client
                .get(format!("{}/api/v1/query", prom.url))
                .query(&[("query", "app:log_5xx:count1m")])
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            match v["data"]["result"].as_array().and_then(|r| r.first()) {
                Some(s) if s["value"][1] == "10" => Ok(s.clone()),
                _ => Err(format!("{v} {}", prom.log())),
            }
        },
    )
    .await;
    assert_eq!(
        sample["metric"],
        serde_json::json!({"__name__": "app:log_5xx:count1m", "app": "api", "source": "lode"})
    );

    // The same LogQL at the recorded sample's timestamp gives the same value.
    let stamped: Value = client
        .get(format!("{}/api/v1/query", prom.url))
        .query(&[("query", "timestamp(app:log_5xx:count1m)")])
        .send()
        .await
        .expect("query prometheus")
        .json()
        .await
        .expect("prometheus JSON");
    let ts: f64 = stamped["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("sample timestamp");
    let r: Value = server
        .client
        .get(format!("{}/loki/api/v1/query", server.url))
        .query(&[("query", EXPR), ("time", &format!("{ts:.3}"))])
        .send()
        .await
        .expect("query lode")
        .json()
        .await
        .expect("lode JSON");
    let lode = &r["data"]["result"][0];
    assert_eq!(lode["metric"], serde_json::json!({"app": "api"}), "{r}");
    assert_eq!(lode["value"][1], sample["value"][1], "{r}");
    server.stop().await;
}
