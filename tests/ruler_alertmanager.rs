//! End to end with the real Debian `prometheus-alertmanager` on loopback: logs with a 10%
//! 5xx rate make the error-rate rule go pending, then firing after `for`; Alertmanager's
//! `GET /api/v2/alerts` shows the alert with its labels and annotations; once only 2xx
//! lines arrive the alert resolves and leaves Alertmanager.

mod common;
mod ruler_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{now_ns, TestServer};
use ruler_support::{access_log_push, eventually, Daemon, RuleDirs};
use serde_json::Value;

const RULES: &str = r#"groups:
  - name: api-errors
    interval: 1s
    rules:
      - alert: HighErrorRate
        expr: |
          sum by (app) (count_over_time({app="api"} | json | status >= 500 [5s]))
            /
          sum by (app) (count_over_time({app="api"}[5s])) > 0.05
        for: 2s
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.app }} 5xx ratio {{ $value | humanizePercentage }}"
"#;

async fn lode_alerts(server: &TestServer) -> Vec<Value> {
    let (status, body) = server.get_text("/prometheus/api/v1/alerts").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("alerts JSON");
    v["data"]["alerts"].as_array().cloned().unwrap_or_default()
}

async fn am_alerts(client: &reqwest::Client, am: &Daemon) -> Result<Vec<Value>, String> {
    let r = client
        .get(format!("{}/api/v2/alerts", am.url))
        .query(&[("filter", "alertname=\"HighErrorRate\"")])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    v.as_array().cloned().ok_or_else(|| v.to_string())
}

#[tokio::test]
async fn error_rate_alert_fires_in_alertmanager_and_resolves_when_errors_stop() {
    let dirs = RuleDirs::new();
    let am = Daemon::alertmanager(dirs.dir.path()).await;
    dirs.write("fake", "api.yaml", RULES);
    let server = TestServer::start(&dirs.config(&format!("  alertmanager_url: {}", am.url))).await;

    // One batch of ten lines every 300 ms, one of them a 500 while `errors` is set.
    let errors = Arc::new(AtomicBool::new(true));
    let pusher = {
        let (url, errors) = (server.url.clone(), errors.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let every = if errors.load(Ordering::SeqCst) { 10 } else { 0 };
                let body = access_log_push("api", 10, every, now_ns());
                let _ = client
                    .post(format!("{url}/loki/api/v1/push"))
                    .json(&body)
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    let pending = eventually(
        "the alert to be pending",
        Duration::from_secs(10),
        || async {
            let alerts = lode_alerts(&server).await;
            match alerts.first() {
                Some(a) if a["state"] == "pending" => Ok(a.clone()),
                _ => Err(format!("{alerts:?}")),
            }
        },
    )
    .await;
    assert_eq!(pending["labels"]["alertname"], "HighErrorRate");
    assert_eq!(pending["labels"]["app"], "api");

    let client = reqwest::Client::new();
    let in_am = eventually(
        "Alertmanager to show the firing alert",
        Duration::from_secs(15),
        || async {
            let alerts = am_alerts(&client, &am).await?;
            match alerts.first() {
                Some(a) => Ok(a.clone()),
                None => Err(format!(
                    "no alert yet; lode says {:?}",
                    lode_alerts(&server).await
                )),
            }
        },
    )
    .await;
    assert_eq!(
        in_am["labels"],
        serde_json::json!({"alertname": "HighErrorRate", "app": "api", "severity": "page"})
    );
    let summary = in_am["annotations"]["summary"].as_str().unwrap_or("");
    assert!(
        summary.starts_with("api 5xx ratio ") && summary.ends_with('%'),
        "{summary}"
    );
    assert_eq!(in_am["status"]["state"], "active");
    let firing = lode_alerts(&server).await;
    assert_eq!(
        firing.first().map(|a| a["state"].clone()),
        Some("firing".into())
    );

    // Only 2xx from now on: once 2xx lines dilute the 5 s window below 5% the alert
    // resolves.
    errors.store(false, Ordering::SeqCst);
    eventually(
        "the alert to resolve in Alertmanager",
        Duration::from_secs(20),
        || async {
            let alerts = am_alerts(&client, &am).await?;
            if alerts.is_empty() {
                Ok(())
            } else {
                Err(format!("{alerts:?}"))
            }
        },
    )
    .await;
    assert!(lode_alerts(&server).await.is_empty());
    pusher.abort();
    server.stop().await;
}
