//! `lode rules check` on the shipped examples (`deploy/rules/`) and on broken files, run
//! as the real binary; and every example rule's query answered by a live server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{now_ns, TestServer};
use serde_json::{json, Value};

fn example_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rules/fake");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/rules/fake exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no example rule files in {}",
        dir.display()
    );
    files
}

fn rules_check(files: &[PathBuf]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lode"))
        .arg("rules")
        .arg("check")
        .args(files)
        .output()
        .expect("run lode rules check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_examples_pass_rules_check() {
    let (code, stdout, stderr) = rules_check(&example_files());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("SUCCESS: "), "{stdout}");
    for alert in [
        "HighHttp5xxRate",
        "HighP99Latency",
        "ErrorLogBurst",
        "NoLogsFromApp",
        "ShipperDroppingLogs",
    ] {
        let text: String = example_files()
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect();
        assert!(
            text.contains(&format!("alert: {alert}")),
            "example {alert} is missing"
        );
    }
}

#[test]
fn broken_files_fail_with_file_group_rule_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let dup = dir.path().join("dup.yaml");
    std::fs::write(
        &dup,
        "groups:\n  - name: g\n    rules:\n      - record: a:b\n        expr: sum(count_over_time({app=\"x\"}[1m]))\n  - name: g\n    rules:\n      - record: a:c\n        expr: sum(count_over_time({app=\"x\"}[1m]))\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "groups:\n  - name: errors\n    rules:\n      - alert: Broken\n        expr: sum(rate({app=\"x\" |= \"error\" [5m]))\n",
    )
    .unwrap();
    let (code, stdout, stderr) = rules_check(&[dup.clone(), bad.clone()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.starts_with("FAILED:"), "{stderr}");
    assert!(stderr.contains(&dup.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("\"g\""),
        "names the duplicate group: {stderr}"
    );
    assert!(stderr.contains("\"errors\""), "names the group: {stderr}");
    assert!(stderr.contains("\"Broken\""), "names the rule: {stderr}");
}

/// Every example's `expr` runs on the query engine the ruler uses, over JSON access logs.
#[tokio::test]
async fn every_example_query_is_answered_by_the_engine() {
    let server = TestServer::start("").await;
    let now = now_ns();
    let values: Vec<Value> = (0..50)
        .map(|i| {
            let status = if i % 5 == 0 { 503 } else { 200 };
            let line = json!({"status": status, "duration": 1.5, "msg": "error handling request"});
            json!([
                (now - (50 - i) * 1_000_000_000i64).to_string(),
                line.to_string()
            ])
        })
        .collect();
    let body =
        json!({"streams": [{"stream": {"app": "api", "namespace": "prod"}, "values": values}]});
    let (status, text) = server.push_json(None, &body).await;
    assert_eq!(status, 204, "{text}");

    let mut checked = 0;
    for file in example_files() {
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for group in doc["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                let expr = rule["expr"].as_str().unwrap();
                let r = server
                    .client
                    .get(format!("{}/loki/api/v1/query", server.url))
                    .query(&[("query", expr)])
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                assert_eq!(status, 200, "{expr}: {text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["data"]["resultType"], "vector", "{expr}: {text}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} example rules");
    server.stop().await;
}
