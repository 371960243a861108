//! Push validation over HTTP: Loki's statuses and messages, partial accept, limits, tenants.

mod common;

use common::{entry, now_ns, request, TestServer};

const HOUR: i64 = 3_600_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_entries_are_400_and_valid_ones_of_the_same_push_are_stored() {
    let s = TestServer::start("limits_config:\n  max_line_size: 1KB\n").await;
    let t = now_ns();
    let labels16: Vec<String> = (0..16).map(|i| format!("l{i}=\"v\"")).collect();
    let sel16 = format!("{{{}}}", labels16.join(","));
    let req = request(vec![
        (
            r#"{app="api"}"#,
            vec![
                entry(t, "good 1"),
                entry(t - 200 * HOUR, "too old"),
                entry(t + HOUR, "too new"),
                entry(t + 1, &"x".repeat(2000)),
                entry(t + 2, "good 2"),
            ],
        ),
        (r#"{app="#, vec![entry(t, "bad labels")]),
        (&sel16, vec![entry(t, "too many labels")]),
        (r#"{app="web"}"#, vec![entry(t, "good 3")]),
    ]);
    let (status, text) = s.push(None, &req).await;
    assert_eq!(status, 400, "{text}");
    for needle in [
        r#"entry for stream '{app="api", service_name="api"}' has timestamp too old"#,
        "reject_old_samples_max_age = 168h",
        "has timestamp too new",
        "creation_grace_period = 10m",
        "line too long: 2000 bytes",
        "max_line_size = 1KB",
        "error parsing labels '{app=' with error:",
        "has 16 label names; limit 15 (limits_config.max_label_names_per_series)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert_eq!(
        s.head_lines("fake", r#"{app="api"}"#),
        vec!["good 1", "good 2"]
    );
    assert_eq!(s.head_lines("fake", r#"{app="web"}"#), vec!["good 3"]);

    let metrics = s.metrics().await;
    for reason in [
        "greater_than_max_sample_age",
        "too_far_in_future",
        "line_too_long",
        "invalid_labels",
        "max_label_names_per_series",
    ] {
        let series =
            format!(r#"lode_discarded_samples_total{{reason="{reason}",tenant="fake"}} 1"#);
        assert!(metrics.contains(&series), "missing {series} in:\n{metrics}");
    }
    assert!(metrics
        .contains(r#"lode_discarded_bytes_total{reason="line_too_long",tenant="fake"} 2000"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_truncated_when_configured() {
    let s =
        TestServer::start("limits_config:\n  max_line_size: 10B\n  max_line_size_truncate: true\n")
            .await;
    let req = request(vec![(
        r#"{app="a"}"#,
        vec![entry(now_ns(), "0123456789abcdef")],
    )]);
    let (status, text) = s.push(None, &req).await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(s.head_lines("fake", r#"{app="a"}"#), vec!["0123456789"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_name_and_value_lengths_are_limited() {
    let s = TestServer::start(
        "limits_config:\n  max_label_name_length: 8\n  max_label_value_length: 8\n",
    )
    .await;
    let t = now_ns();
    let (status, text) = s
        .push(
            None,
            &request(vec![(r#"{app="123456789"}"#, vec![entry(t, "x")])]),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        text.contains("has label value too long: '123456789'"),
        "{text}"
    );
    assert!(text.contains("max_label_value_length = 8"), "{text}");
    let (status, text) = s
        .push(
            None,
            &request(vec![(r#"{application="a"}"#, vec![entry(t, "x")])]),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        text.contains("has label name too long: 'application'"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_samples_are_accepted_when_rejection_is_off() {
    let s = TestServer::start("limits_config:\n  reject_old_samples: false\n").await;
    let old = now_ns() - 24 * 30 * HOUR;
    let (status, text) = s
        .push(
            None,
            &request(vec![(r#"{app="a"}"#, vec![entry(old, "last month")])]),
        )
        .await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(s.head_lines("fake", r#"{app="a"}"#), vec!["last month"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_too_far_behind_the_stream_are_400_and_named() {
    let s = TestServer::start("").await;
    let t = now_ns();
    let (status, _) = s
        .push(
            None,
            &request(vec![(r#"{app="a"}"#, vec![entry(t, "newest")])]),
        )
        .await;
    assert_eq!(status, 204);
    let (status, text) = s
        .push(
            None,
            &request(vec![(
                r#"{app="a"}"#,
                vec![
                    entry(t - 2 * HOUR, "way behind"),
                    entry(t - 1, "slightly behind"),
                ],
            )]),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("too far behind"), "{text}");
    assert_eq!(
        s.head_lines("fake", r#"{app="a"}"#),
        vec!["slightly behind", "newest"]
    );
    assert!(s
        .metrics()
        .await
        .contains(r#"lode_discarded_samples_total{reason="too_far_behind",tenant="fake"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_duplicates_are_dropped_silently() {
    let s = TestServer::start("").await;
    let t = now_ns();
    let req = request(vec![(r#"{app="a"}"#, vec![entry(t, "same")])]);
    assert_eq!(s.push(None, &req).await.0, 204);
    assert_eq!(s.push(None, &req).await.0, 204);
    assert_eq!(s.head_lines("fake", r#"{app="a"}"#), vec!["same"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_over_the_ingestion_rate_are_429_and_store_nothing() {
    // 1 KiB burst: the first push fits, the second does not.
    let s = TestServer::start(
        "limits_config:\n  ingestion_rate_mb: 0.0001\n  ingestion_burst_size_mb: 0.001\n",
    )
    .await;
    let t = now_ns();
    let line = "z".repeat(700);
    let (status, _) = s
        .push(
            None,
            &request(vec![(r#"{app="a"}"#, vec![entry(t, &line)])]),
        )
        .await;
    assert_eq!(status, 204);
    let (status, text) = s
        .push(
            None,
            &request(vec![(r#"{app="a"}"#, vec![entry(t + 1, &line)])]),
        )
        .await;
    assert_eq!(status, 429, "{text}");
    assert!(
        text.starts_with("ingestion rate limit exceeded for user fake"),
        "{text}"
    );
    assert!(text.contains("ingestion_rate_mb"), "{text}");
    assert_eq!(s.head_entries("fake", r#"{app="a"}"#).len(), 1);
    assert!(s
        .metrics()
        .await
        .contains(r#"lode_discarded_samples_total{reason="rate_limited",tenant="fake"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_over_the_stream_limit_are_429_and_known_streams_still_pass() {
    let s = TestServer::start("limits_config:\n  max_global_streams_per_user: 2\n").await;
    let t = now_ns();
    let (status, _) = s
        .push(
            None,
            &request(vec![
                (r#"{app="a"}"#, vec![entry(t, "a")]),
                (r#"{app="b"}"#, vec![entry(t, "b")]),
            ]),
        )
        .await;
    assert_eq!(status, 204);
    let (status, text) = s
        .push(
            None,
            &request(vec![
                (r#"{app="c"}"#, vec![entry(t, "c")]),
                (r#"{app="a"}"#, vec![entry(t + 1, "a2")]),
            ]),
        )
        .await;
    assert_eq!(status, 429, "{text}");
    assert!(
        text.contains("maximum active stream limit exceeded"),
        "{text}"
    );
    assert!(text.contains("max_global_streams_per_user = 2"), "{text}");
    assert_eq!(s.head_lines("fake", r#"{app="a"}"#), vec!["a", "a2"]);
    assert!(s.head_lines("fake", r#"{app="c"}"#).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_enabled_requires_an_org_id_and_keeps_tenants_apart() {
    let s = TestServer::start("auth_enabled: true\n").await;
    let req = request(vec![(r#"{app="a"}"#, vec![entry(now_ns(), "team a")])]);
    let (status, text) = s.push(None, &req).await;
    assert_eq!(status, 401);
    assert!(text.starts_with("no org id"), "{text}");
    let (status, text) = s.push(Some("../etc"), &req).await;
    assert_eq!(status, 400);
    assert!(text.contains("invalid tenant id"), "{text}");
    assert_eq!(s.push(Some("team-a"), &req).await.0, 204);
    assert_eq!(s.head_lines("team-a", r#"{app="a"}"#), vec!["team a"]);
    assert!(s.head_lines("team-b", r#"{app="a"}"#).is_empty());
    assert!(s.head_lines("fake", r#"{app="a"}"#).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_every_push_is_tenant_fake() {
    let s = TestServer::start("").await;
    let req = request(vec![(r#"{app="a"}"#, vec![entry(now_ns(), "x")])]);
    assert_eq!(s.push(Some("someone"), &req).await.0, 204);
    assert_eq!(s.head_lines("fake", r#"{app="a"}"#), vec!["x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_overrides_apply_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runtime.yaml");
    std::fs::write(&file, "overrides:\n  small:\n    max_line_size: 5B\n").unwrap();
    let s = TestServer::start(&format!(
        "auth_enabled: true\nruntime_config:\n  file: {}\n",
        file.display()
    ))
    .await;
    let req = request(vec![(
        r#"{app="a"}"#,
        vec![entry(now_ns(), "longer than five")],
    )]);
    let (status, text) = s.push(Some("small"), &req).await;
    assert_eq!(status, 400);
    assert!(text.contains("max_line_size = 5"), "{text}");
    assert_eq!(s.push(Some("big"), &req).await.0, 204);
}
