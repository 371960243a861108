//! The operational endpoints of `lode serve` and its graceful shutdown, over HTTP.

mod common;

use common::{entry, now_ns, request, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_metrics_buildinfo_and_404_answer_like_loki() {
    let s = TestServer::start("").await;
    assert_eq!(s.get_text("/ready").await, (200, "ready\n".to_string()));

    let r = s.get("/loki/api/v1/status/buildinfo").await;
    assert_eq!(r.status().as_u16(), 200);
    let info: serde_json::Value = r.json().await.unwrap();
    assert!(
        info["version"].as_str().unwrap().starts_with("3."),
        "{info}"
    );

    let (status, body) = s.get_text("/loki/api/v1/no_such_thing").await;
    assert_eq!((status, body.as_str()), (404, "404 page not found\n"));

    let req = request(vec![(r#"{app="m"}"#, vec![entry(now_ns(), "counted")])]);
    assert_eq!(s.push(None, &req).await.0, 204);
    let r = s.get("/metrics").await;
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("text"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#"lode_distributor_received_lines_total{tenant="fake"} 1"#),
        "{text}"
    );
    assert!(text.contains("lode_wal_fsync_duration_seconds"), "{text}");
    assert!(
        text.contains(r#"route="/loki/api/v1/push",method="POST",status="204""#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_endpoint_shows_the_effective_config() {
    let s = TestServer::start("limits_config:\n  max_line_size: 1KB\n").await;
    let (status, yaml) = s.get_text("/config").await;
    assert_eq!(status, 200);
    assert!(yaml.contains("max_line_size: 1KB"), "{yaml}");
    assert!(yaml.contains("http_listen_port: 0"), "{yaml}");
    let (_, diffs) = s.get_text("/config?mode=diffs").await;
    assert!(diffs.contains("max_line_size: 1KB"), "{diffs}");
    assert!(!diffs.contains("ingestion_rate_mb"), "{diffs}");
    let (_, defaults) = s.get_text("/config?mode=defaults").await;
    assert!(defaults.contains("http_listen_port: 3100"), "{defaults}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_writes_heads_to_a_segment() {
    let s = TestServer::start("").await;
    let req = request(vec![(r#"{app="f"}"#, vec![entry(now_ns(), "flush me")])]);
    assert_eq!(s.push(None, &req).await.0, 204);
    let r = s
        .client
        .post(format!("{}/flush", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(s.head_lines("fake", r#"{app="f"}"#).is_empty());
    assert_eq!(
        s.state()
            .storage
            .segments(&lode::TenantId::default_tenant())
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_and_a_restart_finds_the_segment() {
    let s = TestServer::start("").await;
    let req = request(vec![(r#"{app="g"}"#, vec![entry(now_ns(), "before stop")])]);
    assert_eq!(s.push(None, &req).await.0, 204);
    let dir = s.stop().await;
    let s = TestServer::restart("", dir).await;
    // Flushed, so nothing is left to replay into heads; the segment holds the entry.
    assert!(s.head_lines("fake", r#"{app="g"}"#).is_empty());
    let segments = s
        .state()
        .storage
        .segments(&lode::TenantId::default_tenant());
    assert_eq!(segments.len(), 1);
}

/// The value of an unlabelled counter or histogram series in a `/metrics` exposition.
fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_metrics_count_fsyncs_records_bytes_and_cut_tails() {
    let s = TestServer::start("").await;
    let req = request(vec![(
        r#"{app="wal"}"#,
        vec![entry(now_ns(), "one"), entry(now_ns() + 1, "two")],
    )]);
    assert_eq!(s.push(None, &req).await.0, 204);
    let m = s.metrics().await;
    assert!(metric_value(&m, "lode_wal_fsync_duration_seconds_count") >= 1.0);
    assert_eq!(metric_value(&m, "lode_wal_records_total"), 1.0);
    assert!(metric_value(&m, "lode_wal_bytes_written_total") > 0.0);
    assert_eq!(metric_value(&m, "lode_wal_corruptions_total"), 0.0);
    // A crash mid-write leaves a torn tail; the next start cuts it and counts it.
    let dir = s.stop().await;
    let wal_dir = dir.path().join("wal");
    let newest = std::fs::read_dir(&wal_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .max()
        .expect("a wal segment after shutdown");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xff, 0x00, 0x00, 0x10, 1, 2, 3]).unwrap();
    drop(f);
    let s = TestServer::restart("", dir).await;
    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "lode_wal_corruptions_total"), 1.0);
    s.stop().await;
}
