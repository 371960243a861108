//! Pod-label enrichment end to end: the real `lode-shipper` binary with
//! `kubernetes.enrich_pod_labels: true` against an in-test HTTP server that answers the
//! pod-list endpoint (`GET /api/v1/pods?fieldSelector=spec.nodeName=node-1`) the way the
//! Kubernetes API does.
//!
//! There is no Kubernetes API server on the test machine, so this fake stands in for it,
//! over plain HTTP (`api_url: http://127.0.0.1:<port>`, `ca_file: null`); in a cluster the
//! API is HTTPS with the service-account CA, which this test does not exercise. Checked:
//! the request selects this node and carries the (re-read, rotating) bearer token;
//! streams carry the selected pod labels, sanitised; when the API fails (500) shipping
//! goes on with the last good labels (and path labels only for unknown pods), the error
//! is counted and logged once; a pod listed later gets its labels from then on.

// Test helpers fail the test on any unexpected error, which is what unwrap does.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use common::*;

#[derive(Default)]
struct ApiState {
    status: AtomicU16,
    body: Mutex<String>,
    /// (query string, Authorization header) of every request.
    requests: Mutex<Vec<(String, String)>>,
}

/// A fake Kubernetes API answering only the pod list.
struct FakeApi {
    addr: SocketAddr,
    state: Arc<ApiState>,
    _rt: tokio::runtime::Runtime,
}

async fn list_pods(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> (StatusCode, String) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    state
        .requests
        .lock()
        .unwrap()
        .push((query.unwrap_or_default(), auth));
    let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
    if status != StatusCode::OK {
        return (status, r#"{"kind":"Status","message":"boom"}"#.into());
    }
    (status, state.body.lock().unwrap().clone())
}

impl FakeApi {
    fn start(body: String) -> Self {
        let state = Arc::new(ApiState {
            status: AtomicU16::new(200),
            body: Mutex::new(body),
            ..Default::default()
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/api/v1/pods", axum::routing::get(list_pods))
            .with_state(state.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApi {
            addr,
            state,
            _rt: rt,
        }
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.state.requests.lock().unwrap().clone()
    }
}

/// (namespace, name, uid, labels) of one listed pod.
type FakePod<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

fn pod_list(pods: &[FakePod<'_>]) -> String {
    let items: Vec<serde_json::Value> = pods
        .iter()
        .map(|(ns, name, uid, labels)| {
            let labels: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect();
            serde_json::json!({
                "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels},
                "spec": {"nodeName": "node-1"},
            })
        })
        .collect();
    serde_json::json!({"kind": "PodList", "apiVersion": "v1", "items": items}).to_string()
}

/// The labels (as `{a="b", ...}`) of the first received entry whose line is `line`.
fn labels_of(rx: &Receiver, line: &str) -> Option<String> {
    rx.entries()
        .into_iter()
        .find(|e| e.line == line)
        .map(|e| e.labels.to_string())
}

const WEB_LABELS: &[(&str, &str)] = &[
    ("app.kubernetes.io/name", "web"),
    ("team", "shop-team"),
    ("not-selected", "x"),
    // Path labels win over a pod label of the same name.
    ("namespace", "wrong"),
];

#[test]
fn pod_labels_from_the_api_are_added_and_api_failures_do_not_stop_shipping() {
    let mut node = Node::new();
    let rx = Receiver::start();
    let api = FakeApi::start(pod_list(&[("shop", "web-0", "uid-web", WEB_LABELS)]));
    let token = node.dir.path().join("token");
    std::fs::write(&token, "tok-1\n").unwrap();
    let config = format!(
        "{}kubernetes:
  enrich_pod_labels: true
  api_url: http://{}
  token_file: {}
  ca_file: null
  refresh_interval: 200ms
  labels: [app.kubernetes.io/name, team, namespace]
",
        node.config(&rx.url(), ""),
        api.addr,
        token.display()
    );
    let web = node.container_log("shop", "web-0", "uid-web", "nginx");
    let shipper = node.start_shipper(&config);

    // The pod list is requested for this node only, with the token.
    wait_until("the pod list is requested", &shipper, || {
        !api.requests().is_empty()
    });
    let (query, auth) = api.requests().first().cloned().unwrap();
    assert_eq!(query, "fieldSelector=spec.nodeName%3Dnode-1");
    assert_eq!(auth, "Bearer tok-1");
    wait_until("the pod list is loaded", &shipper, || {
        shipper.metric("lode_shipper_kubernetes_pods") == 1.0
    });

    append(&web, &cri(T0, "stdout", "F", "web line 1"));
    wait_until("web line 1 arrives", &shipper, || {
        labels_of(&rx, "web line 1").is_some()
    });
    let enriched = r#"{app="web", app_kubernetes_io_name="web", container="nginx", job="shop/nginx", namespace="shop", node_name="node-1", pod="web-0", stream="stdout", team="shop-team"}"#;
    assert_eq!(labels_of(&rx, "web line 1").unwrap(), enriched);

    // A rotated token is picked up on the next refresh.
    std::fs::write(&token, "tok-2\n").unwrap();
    wait_until("the new token is sent", &shipper, || {
        api.requests().iter().any(|(_, a)| a == "Bearer tok-2")
    });

    // The API fails: shipping goes on, known pods keep their last labels, a new pod ships
    // with path labels only, the errors are counted and logged once.
    api.state.status.store(500, Ordering::SeqCst);
    wait_until("three API errors are counted", &shipper, || {
        shipper.metric("lode_shipper_kubernetes_errors_total") >= 3.0
    });
    let db = node.container_log("shop", "db-0", "uid-db", "postgres");
    append(&db, &cri(T0 + 10, "stdout", "F", "db line 1"));
    append(&web, &cri(T0 + 20, "stdout", "F", "web line 2"));
    wait_until("lines written during the outage arrive", &shipper, || {
        labels_of(&rx, "db line 1").is_some() && labels_of(&rx, "web line 2").is_some()
    });
    assert_eq!(labels_of(&rx, "web line 2").unwrap(), enriched);
    assert_eq!(
        labels_of(&rx, "db line 1").unwrap(),
        r#"{app="db", container="postgres", job="shop/postgres", namespace="shop", node_name="node-1", pod="db-0", stream="stdout"}"#
    );
    let warnings = std::fs::read_to_string(node.dir.path().join("shipper-1.log"))
        .unwrap()
        .matches("pod list from the kubernetes API failed")
        .count();
    assert_eq!(warnings, 1, "{}", shipper.log_tail());

    // The API recovers and now lists db-0: its open file gets the labels from then on.
    *api.state.body.lock().unwrap() = pod_list(&[
        ("shop", "web-0", "uid-web", WEB_LABELS),
        ("shop", "db-0", "uid-db", &[("team", "data")]),
    ]);
    api.state.status.store(200, Ordering::SeqCst);
    wait_until("both pods are loaded", &shipper, || {
        shipper.metric("lode_shipper_kubernetes_pods") == 2.0
    });
    append(&db, &cri(T0 + 30, "stdout", "F", "db line 2"));
    wait_until("db line 2 arrives", &shipper, || {
        labels_of(&rx, "db line 2").is_some()
    });
    assert_eq!(
        labels_of(&rx, "db line 2").unwrap(),
        r#"{app="db", container="postgres", job="shop/postgres", namespace="shop", node_name="node-1", pod="db-0", stream="stdout", team="data"}"#
    );
}
