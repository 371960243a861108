//! The ruler's HTTP APIs on a real `lode serve`: the config API round trip as Grafana
//! drives it (`/api/prom/rules`, YAML bodies, 202 JSON acks, the 404 texts it reads as
//! "empty"), the Prometheus-style status JSON, and bad input (malformed YAML, duplicate
//! group names, bad LogQL, a query failing at evaluation, an unreachable Alertmanager)
//! while other groups keep evaluating.

mod common;
mod ruler_support;

use std::time::Duration;

use common::{now_ns, TestServer};
use ruler_support::{access_log_push, eventually, free_port, metric_sum, RuleDirs};
use serde_json::Value;

const GROUP: &str = r#"name: api-errors
interval: 1s
rules:
  - alert: HighErrorRate
    expr: sum by (app) (count_over_time({app="api"} | json | status >= 500 [1m])) > 0
    for: 5m
    labels:
      severity: page
    annotations:
      summary: "{{ $labels.app }} has errors"
  - record: app:lines:count1m
    expr: sum by (app) (count_over_time({app="api"}[1m]))
"#;

async fn send(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut req = server
        .client
        .request(method, format!("{}{path}", server.url));
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ctype, r.text().await.unwrap_or_default())
}

async fn prom_rules(server: &TestServer, query: &str) -> Value {
    let (status, ctype, body) = send(
        server,
        reqwest::Method::GET,
        &format!("/prometheus/api/v1/rules{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        ctype.contains("json"),
        "Grafana requires a JSON type: {ctype}"
    );
    serde_json::from_str(&body).expect("rules JSON")
}

#[tokio::test]
async fn a_group_round_trips_through_the_grafana_config_api() {
    let dirs = RuleDirs::new();
    let server = TestServer::start(&dirs.config("")).await;
    use reqwest::Method;

    // Grafana's feature probe and the empty list: 404 with the texts it reads as "empty".
    let (status, _, body) = send(&server, Method::GET, "/api/prom/rules/test/test", None).await;
    assert_eq!((status, body.trim()), (404, "group does not exist"));
    let (status, _, body) = send(&server, Method::GET, "/api/prom/rules", None).await;
    assert_eq!((status, body.trim()), (404, "no rule groups found"));

    // POST one group (no Content-Type, as Grafana sends it): 202 and Loki's JSON ack.
    let (status, ctype, body) =
        send(&server, Method::POST, "/api/prom/rules/team-a", Some(GROUP)).await;
    assert_eq!(status, 202, "{body}");
    assert!(ctype.contains("json"), "{ctype}");
    let ack: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ack,
        serde_json::json!({"status":"success","data":null,"errorType":"","error":""})
    );

    // Read back: YAML, namespace → groups, zero values left out.
    let (status, ctype, body) = send(&server, Method::GET, "/api/prom/rules", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.contains("yaml"), "{ctype}");
    let all: serde_yaml::Value = serde_yaml::from_str(&body).unwrap();
    let group = &all["team-a"][0];
    assert_eq!(group["name"].as_str(), Some("api-errors"));
    assert_eq!(group["interval"].as_str(), Some("1s"));
    assert_eq!(group["rules"][0]["for"].as_str(), Some("5m"));
    assert!(
        group.get("limit").is_none(),
        "zero limit is omitted: {body}"
    );
    assert!(
        group["rules"][1].get("for").is_none(),
        "recording rules have no for: {body}"
    );

    let (status, ctype, body) = send(
        &server,
        Method::GET,
        "/loki/api/v1/rules/team-a/api-errors",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.contains("yaml"), "{ctype}");
    let one: serde_yaml::Value = serde_yaml::from_str(&body).unwrap();
    assert_eq!(
        one["rules"][1]["record"].as_str(),
        Some("app:lines:count1m")
    );

    // The status API shows the group once it has been evaluated.
    let rules = eventually(
        "the new group's first evaluation",
        Duration::from_secs(10),
        || async {
            let v = prom_rules(&server, "").await;
            let rule = &v["data"]["groups"][0]["rules"][0];
            if rule["health"] == "ok" {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    assert_eq!(rules["status"], "success");
    let g = &rules["data"]["groups"][0];
    assert_eq!(g["file"], "team-a");
    assert_eq!(g["name"], "api-errors");
    assert_eq!(g["interval"], 1.0);
    let alerting = &g["rules"][0];
    assert_eq!(alerting["type"], "alerting");
    assert_eq!(alerting["name"], "HighErrorRate");
    assert_eq!(alerting["duration"], 300.0);
    assert_eq!(alerting["state"], "inactive");
    assert_eq!(alerting["labels"]["severity"], "page");
    assert_eq!(g["rules"][1]["type"], "recording");

    let only_records = prom_rules(&server, "?type=record").await;
    let kept = &only_records["data"]["groups"][0]["rules"];
    assert_eq!(kept.as_array().map(Vec::len), Some(1), "{only_records}");
    let (status, ctype, body) = send(
        &server,
        Method::GET,
        "/prometheus/api/v1/rules?type=bogus",
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(ctype.contains("json"), "{ctype}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["errorType"], "bad_data");

    // Delete the group, then the (now unknown) namespace.
    let (status, _, body) = send(
        &server,
        Method::DELETE,
        "/api/prom/rules/team-a/api-errors",
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = send(
        &server,
        Method::GET,
        "/api/prom/rules/team-a/api-errors",
        None,
    )
    .await;
    assert_eq!((status, body.trim()), (404, "group does not exist"));
    let (status, _, body) = send(&server, Method::DELETE, "/api/prom/rules/team-a", None).await;
    assert_eq!(
        (status, body.trim()),
        (404, "group namespace does not exist")
    );
    let after = prom_rules(&server, "").await;
    assert_eq!(after["data"]["groups"], serde_json::json!([]), "{after}");
    server.stop().await;
}

#[tokio::test]
async fn bad_groups_are_refused_with_a_message_naming_the_problem() {
    let dirs = RuleDirs::new();
    let server = TestServer::start(&dirs.config("")).await;
    use reqwest::Method;

    let (status, _, body) = send(
        &server,
        Method::POST,
        "/api/prom/rules/ns",
        Some("name: [unclosed"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unable to decode rule group"), "{body}");

    let bad_logql = "name: g\nrules:\n  - alert: A\n    expr: sum(rate({app=\"api\" [5m]))\n";
    let (status, _, body) =
        send(&server, Method::POST, "/api/prom/rules/ns", Some(bad_logql)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"A\""), "names the rule: {body}");

    let log_query = "name: g\nrules:\n  - alert: A\n    expr: '{app=\"api\"} |= \"error\"'\n";
    let (status, _, body) =
        send(&server, Method::POST, "/api/prom/rules/ns", Some(log_query)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("log query"), "{body}");

    let (status, _, body) = send(&server, Method::GET, "/api/prom/rules", None).await;
    assert_eq!((status, body.trim()), (404, "no rule groups found"));
    server.stop().await;
}

const GOOD_FILE: &str = r#"groups:
  - name: healthy
    interval: 1s
    rules:
      - record: app:lines:count1m
        expr: sum by (app) (count_over_time({app="api"}[1m]))
"#;

const DUPLICATE_FILE: &str = r#"groups:
  - name: twice
    rules:
      - record: a:b:c
        expr: sum(count_over_time({app="api"}[1m]))
  - name: twice
    rules:
      - record: a:b:d
        expr: sum(count_over_time({app="api"}[1m]))
"#;

/// Fails at evaluation, not at load: `on()` matches both series of each side with each
/// other, and many-to-many matching is an error.
const FAILING_FILE: &str = r#"groups:
  - name: many-to-many
    interval: 1s
    rules:
      - record: app:lines:by_app
        expr: sum by (app) (count_over_time({env="prod"}[1m])) + on() sum by (app) (count_over_time({env="prod"}[1m]))
  - name: always-firing
    interval: 1s
    rules:
      - alert: AlwaysFiring
        expr: sum(count_over_time({app="api"}[1m])) > 0
        labels: {severity: page}
"#;

#[tokio::test]
async fn broken_files_failing_queries_and_a_dead_alertmanager_leave_other_groups_running() {
    let dirs = RuleDirs::new();
    dirs.write("fake", "good.yaml", GOOD_FILE);
    dirs.write("fake", "dup.yaml", DUPLICATE_FILE);
    dirs.write("fake", "malformed.yaml", "groups: [name: x\n");
    dirs.write("fake", "failing.yaml", FAILING_FILE);
    let dead_am = format!("http://127.0.0.1:{}", free_port());
    let yaml = dirs.config(&format!(
        "  alertmanager_url: {dead_am}\n  notification_timeout: 1s"
    ));
    let server = TestServer::start(&yaml).await;
    let now = now_ns();
    for app in ["api", "web"] {
        let mut body = access_log_push(app, 20, 0, now);
        body["streams"][0]["stream"]["env"] = Value::from("prod");
        let (status, text) = server.push_json(None, &body).await;
        assert_eq!(status, 204, "{text}");
    }

    // Malformed and duplicate-name files are not loaded; the reload metric says so.
    let metrics = server.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "lode_ruler_config_last_reload_successful",
            "tenant=\"fake\""
        ),
        0.0,
        "{metrics}"
    );

    // The good group keeps evaluating successfully, the failing one reports its error,
    // and alerts that cannot be delivered are counted.
    let rules = eventually(
        "evaluations, an evaluation error and failed notifications",
        Duration::from_secs(15),
        || async {
            let metrics = server.metrics().await;
            let failures = metric_sum(
                &metrics,
                "lode_ruler_evaluation_failures_total",
                "rule_group=\"failing.yaml;many-to-many\"",
            );
            let healthy = metric_sum(
                &metrics,
                "lode_ruler_evaluations_total",
                "rule_group=\"good.yaml;healthy\"",
            );
            let errors = metric_sum(&metrics, "lode_ruler_notifications_errors_total", "");
            let v = prom_rules(&server, "").await;
            if failures >= 1.0 && healthy >= 2.0 && errors >= 1.0 {
                Ok(v)
            } else {
                Err(format!(
                    "failures {failures} healthy evals {healthy} notify errors {errors}"
                ))
            }
        },
    )
    .await;
    let groups = rules["data"]["groups"].as_array().unwrap();
    let names: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
    assert!(names.contains(&"healthy"), "{names:?}");
    assert!(!names.contains(&"twice"), "duplicate groups are not loaded");
    let failing = groups.iter().find(|g| g["name"] == "many-to-many").unwrap();
    assert_eq!(failing["rules"][0]["health"], "err");
    let last_error = failing["rules"][0]["lastError"].as_str().unwrap_or("");
    assert!(last_error.contains("many-to-many"), "{last_error}");
    let healthy = groups.iter().find(|g| g["name"] == "healthy").unwrap();
    assert_eq!(healthy["rules"][0]["health"], "ok");
    let firing = groups
        .iter()
        .find(|g| g["name"] == "always-firing")
        .unwrap();
    assert_eq!(firing["rules"][0]["state"], "firing");
    server.stop().await;
}

#[tokio::test]
async fn without_a_ruler_block_no_rule_routes_are_served() {
    let server = TestServer::start("").await;
    let (status, body) = server.get_text("/prometheus/api/v1/rules").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("page not found"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn with_auth_each_tenant_sees_only_its_own_groups() {
    let dirs = RuleDirs::new();
    let server = TestServer::start(&format!("auth_enabled: true\n{}", dirs.config(""))).await;
    let call = |method: reqwest::Method, path: &str, tenant: &str| {
        server
            .client
            .request(method, format!("{}{path}", server.url))
            .header("X-Scope-OrgID", tenant)
    };
    let r = call(reqwest::Method::POST, "/api/prom/rules/ns", "team-a")
        .body(GROUP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let r = call(reqwest::Method::GET, "/api/prom/rules", "team-a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = call(reqwest::Method::GET, "/api/prom/rules", "team-b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.text().await.unwrap().trim(), "no rule groups found");
    let r = call(reqwest::Method::GET, "/prometheus/api/v1/rules", "team-b")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"]["groups"], serde_json::json!([]), "{v}");
    server.stop().await;
}
