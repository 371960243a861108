//! Shared harness of the integration tests: a real `lode serve` started in-process on
//! 127.0.0.1 with an ephemeral port and a temporary data directory.
//!
//! Owns starting and stopping that server, the HTTP client and push helpers (JSON,
//! protobuf+snappy), and reading what the ingester holds. It does not own assertions: each
//! test file says what a user should see. Every test binary uses a different subset, hence
//! the `dead_code` allowance.
#![allow(dead_code)]

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use lode::config::LodeConfig;
use lode::server::{AppState, RunningServer};
use lode::TenantId;
use lode_push::{Entry, LabelSet, PushRequest, PushStream};

/// A running server and what a test needs to talk to it.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub url: String,
    pub client: reqwest::Client,
    server: Option<RunningServer>,
    dir: tempfile::TempDir,
}

/// Limits for data older than a week, as Loki was run for the conformance answers: old
/// samples accepted, nothing hidden by retention, service-name and level discovery off
/// (streams are exactly what was pushed).
pub const OLD_DATA_CONFIG: &str = r#"
limits_config:
  reject_old_samples: false
  retention_period: 0s
  max_query_lookback: 0s
  discover_service_name: []
  discover_log_levels: false
"#;

/// A response's status and body: JSON when it parses, else the text as a JSON string.
async fn status_and_value(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

/// Now in Unix nanoseconds.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// An entry without structured metadata.
pub fn entry(timestamp_ns: i64, line: &str) -> Entry {
    Entry {
        timestamp_ns,
        line: line.to_string(),
        structured_metadata: Default::default(),
    }
}

/// A push request of `(label-set string, entries)` streams.
pub fn request(streams: Vec<(&str, Vec<Entry>)>) -> PushRequest {
    PushRequest {
        streams: streams
            .into_iter()
            .map(|(labels, entries)| PushStream {
                labels: labels.to_string(),
                entries,
            })
            .collect(),
    }
}

impl TestServer {
    /// Starts a server on `yaml` (a config file's text; may be empty) with its data in a
    /// fresh temporary directory and HTTP on 127.0.0.1, ephemeral port.
    pub async fn start(yaml: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = LodeConfig::from_yaml(yaml).expect("test config parses");
        config.set_path_prefix(dir.path());
        config
            .apply_flags(None, Some("127.0.0.1:0"))
            .expect("listen flag");
        Self::start_config(config, dir).await
    }

    /// Starts a server on a complete config, keeping `dir` alive as long as the server.
    pub async fn start_config(config: LodeConfig, dir: tempfile::TempDir) -> TestServer {
        let server = lode::server::start(config).await.expect("server starts");
        TestServer {
            url: format!("http://{}", server.addr()),
            client: reqwest::Client::new(),
            server: Some(server),
            dir,
        }
    }

    pub fn state(&self) -> &AppState {
        self.server.as_ref().expect("server running").state()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// GET `path` (starting with `/`).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET")
    }

    /// GET `path` and return status and body text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// GET `path` with query `params`: status and body, as JSON when it parses, else as
    /// a JSON string of the text (error bodies are plain text).
    pub async fn get_value(&self, path: &str, params: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .query(params)
            .send()
            .await
            .expect("GET");
        status_and_value(r).await
    }

    /// POSTs `form` as `application/x-www-form-urlencoded` to `path`: status and body as
    /// [`TestServer::get_value`] gives them.
    pub async fn post_form(&self, path: &str, form: &[(&str, String)]) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .form(form)
            .send()
            .await
            .expect("POST");
        status_and_value(r).await
    }

    /// POSTs a body to `/loki/api/v1/push` with optional tenant and headers; returns
    /// status and body text.
    pub async fn push_raw(
        &self,
        tenant: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, String) {
        let mut req = self
            .client
            .post(format!("{}/loki/api/v1/push", self.url))
            .body(body);
        if let Some(t) = tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("push");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// Pushes `req` as Promtail does: snappy-block protobuf, `application/x-protobuf`.
    pub async fn push(&self, tenant: Option<&str>, req: &PushRequest) -> (u16, String) {
        self.push_raw(
            tenant,
            &[("Content-Type", "application/x-protobuf")],
            lode_push::encode_protobuf_snappy(req),
        )
        .await
    }

    /// Pushes a JSON body (`{"streams":[...]}`).
    pub async fn push_json(&self, tenant: Option<&str>, body: &serde_json::Value) -> (u16, String) {
        self.push_raw(
            tenant,
            &[("Content-Type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
    }

    /// The label set a pushed stream is stored under: `labels` plus the `service_name`
    /// the distributor adds with the tenant's discovery settings.
    pub fn stored_labels(&self, tenant: &str, labels: &str) -> LabelSet {
        let tenant = TenantId::new(tenant).expect("tenant id");
        let parsed = LabelSet::parse(labels).expect("label set");
        let limits = self.state().limits.for_tenant(&tenant);
        lode::distributor::discovery::with_service_name(parsed, &limits.discover_service_name)
    }

    /// Every unflushed entry of the stream pushed as `labels` by `tenant`, oldest first.
    pub fn head_entries(&self, tenant: &str, labels: &str) -> Vec<Entry> {
        let stored = self.stored_labels(tenant, labels);
        let tenant = TenantId::new(tenant).expect("tenant id");
        self.state()
            .ingester
            .head_entries(&tenant, &stored, i64::MIN, i64::MAX)
    }

    /// Lines of [`TestServer::head_entries`].
    pub fn head_lines(&self, tenant: &str, labels: &str) -> Vec<String> {
        self.head_entries(tenant, labels)
            .into_iter()
            .map(|e| e.line)
            .collect()
    }

    /// `POST /flush`: every head written to segments now.
    pub async fn post_flush(&self) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}/flush", self.url))
            .send()
            .await
            .expect("POST /flush");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// The `/metrics` exposition.
    pub async fn metrics(&self) -> String {
        self.get_text("/metrics").await.1
    }

    /// Graceful shutdown: drain, flush heads, checkpoint the WAL. Returns the data
    /// directory so a test can restart on it.
    pub async fn stop(self) -> tempfile::TempDir {
        let TestServer { server, dir, .. } = self;
        if let Some(server) = server {
            server.shutdown().await.expect("clean shutdown");
        }
        dir
    }

    /// Restarts on the data directory a previous server left behind.
    pub async fn restart(yaml: &str, dir: tempfile::TempDir) -> TestServer {
        let mut config = LodeConfig::from_yaml(yaml).expect("test config parses");
        config.set_path_prefix(dir.path());
        config
            .apply_flags(None, Some("127.0.0.1:0"))
            .expect("listen flag");
        Self::start_config(config, dir).await
    }
}
