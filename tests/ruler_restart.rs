//! Alert state survives a restart of `lode serve`: a firing alert is firing again after
//! the restart with the time it first became active, instead of starting over as pending.

mod common;
mod ruler_support;

use std::time::Duration;

use common::{now_ns, TestServer};
use ruler_support::{access_log_push, eventually, RuleDirs};
use serde_json::Value;

const RULES: &str = r#"groups:
  - name: api
    interval: 1s
    rules:
      - alert: ApiLogs
        expr: sum by (app) (count_over_time({app="api"}[10m])) > 0
        for: 1s
"#;

async fn firing(server: &TestServer) -> Result<Value, String> {
    let (status, body) = server.get_text("/prometheus/api/v1/alerts").await;
    if status != 200 {
        return Err(format!("{status} {body}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    match v["data"]["alerts"].as_array().and_then(|a| a.first()) {
        Some(a) if a["state"] == "firing" => Ok(a.clone()),
        _ => Err(body),
    }
}

#[tokio::test]
async fn a_firing_alert_keeps_firing_and_its_active_time_across_a_restart() {
    let dirs = RuleDirs::new();
    dirs.write("fake", "api.yaml", RULES);
    let yaml = dirs.config("");
    let server = TestServer::start(&yaml).await;
    let (status, body) = server
        .push_json(None, &access_log_push("api", 10, 0, now_ns()))
        .await;
    assert_eq!(status, 204, "{body}");
    let before = eventually("the alert to fire", Duration::from_secs(10), || {
        firing(&server)
    })
    .await;

    let data = server.stop().await;
    let server = TestServer::restart(&yaml, data).await;
    let after = eventually(
        "the alert to fire after the restart",
        Duration::from_secs(10),
        || firing(&server),
    )
    .await;
    assert_eq!(after["labels"], before["labels"]);
    assert_eq!(
        after["activeAt"], before["activeAt"],
        "the restored alert keeps its start"
    );
    server.stop().await;
}
