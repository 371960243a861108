//! The shipper's YAML configuration (`--config.file`) and its defaults.
//!
//! Owns every setting, its default (one `impl Default` per section), and `validate()`,
//! which names the bad value and the key to change. Command-line flags override a few keys
//! after loading (see `main.rs`). Unknown keys are an error. Durations are Go-style strings
//! (`1s`, `500ms`, `5m`), sizes are bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("invalid setting {key} = {value}: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ShipperConfig {
    pub server: ServerConfig,
    pub client: ClientConfig,
    pub positions: PositionsConfig,
    pub discovery: DiscoveryConfig,
    pub labels: LabelsConfig,
    pub pipeline: PipelineConfig,
    pub kubernetes: KubernetesConfig,
}

/// The shipper's own HTTP endpoint (`/metrics`, `/ready`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub http_listen_address: String,
    pub http_listen_port: u16,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_listen_address: "0.0.0.0".into(),
            http_listen_port: 3101,
        }
    }
}

/// Where and how entries are pushed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Full push URL, e.g. `http://lode:3100/loki/api/v1/push`.
    pub url: String,
    /// Sent as `X-Scope-OrgID`; empty sends no header (single-tenant servers).
    pub tenant_id: String,
    /// When set, the value of this label picks the tenant per stream (e.g. `namespace`);
    /// streams without it use `tenant_id`.
    pub tenant_label: Option<String>,
    /// A batch is sent once its lines reach this many bytes.
    pub batch_size: usize,
    /// ... or once its oldest entry waited this long.
    #[serde(with = "duration")]
    pub batch_wait: Duration,
    #[serde(with = "duration")]
    pub timeout: Duration,
    #[serde(with = "duration")]
    pub min_backoff: Duration,
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    /// 0 retries retryable failures (429, 5xx, connection errors) forever; reading stops
    /// meanwhile (backpressure) so nothing is lost.
    pub max_retries: u32,
    /// Lines held in memory (open batches plus batches waiting to be sent) before reading
    /// pauses.
    pub max_buffered_bytes: usize,
    /// Optional `Authorization: Bearer` token read from this file at start.
    pub bearer_token_file: Option<PathBuf>,
    /// Optional on-disk buffer for outages longer than memory can hold: batches whose
    /// first push fails are written there and their offsets committed.
    pub disk_buffer: Option<DiskBufferConfig>,
    /// How long shutdown waits for in-flight batches before giving up (their offsets are
    /// not committed, so they are re-read on the next start).
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            url: "http://localhost:3100/loki/api/v1/push".into(),
            tenant_id: String::new(),
            tenant_label: None,
            batch_size: 1 << 20,
            batch_wait: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retries: 0,
            max_buffered_bytes: 32 << 20,
            bearer_token_file: None,
            disk_buffer: None,
            shutdown_timeout: Duration::from_secs(20),
        }
    }
}

/// The bounded on-disk buffer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskBufferConfig {
    pub path: PathBuf,
    /// When full, the oldest batches are dropped (counted as `buffer_full`).
    #[serde(default = "DiskBufferConfig::default_max_size")]
    pub max_size_bytes: u64,
}

impl DiskBufferConfig {
    fn default_max_size() -> u64 {
        1 << 30
    }
}

/// The positions (checkpoint) file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PositionsConfig {
    pub filename: PathBuf,
    /// How often the file is fsynced; it is also rewritten (without fsync) after every
    /// acknowledged batch and on shutdown.
    #[serde(with = "duration")]
    pub sync_period: Duration,
}

impl Default for PositionsConfig {
    fn default() -> Self {
        PositionsConfig {
            filename: PathBuf::from("/var/lib/lode-shipper/positions.json"),
            sync_period: Duration::from_secs(1),
        }
    }
}

/// Where reading starts in files that have no checkpoint when the shipper first starts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    #[default]
    Beginning,
    End,
}

/// Which files are tailed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Active log files. Their rotated siblings (`<match>.<suffix>`, not `.gz`/`.tmp`)
    /// are found too, so a file renamed before it was drained is still read.
    pub globs: Vec<String>,
    #[serde(with = "duration")]
    pub rescan_interval: Duration,
    /// How often each open file is checked for new data when inotify is silent.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    pub max_open_files: usize,
    /// Files present at the first start without a checkpoint: read from the beginning or
    /// only new lines. Files appearing later are always read from the beginning.
    pub start_at: StartAt,
    /// A file renamed or deleted is kept open and read until it has been at its end for
    /// this long, because the runtime may still write to it briefly after a rotation.
    #[serde(with = "duration")]
    pub rotate_wait: Duration,
    /// Bytes read from one file per turn, for fairness across files.
    pub read_chunk_bytes: usize,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            globs: vec![
                "/var/log/pods/*/*/*.log".into(),
                "/var/lib/docker/containers/*/*-json.log".into(),
            ],
            rescan_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(250),
            max_open_files: 1024,
            start_at: StartAt::Beginning,
            rotate_wait: Duration::from_secs(2),
            read_chunk_bytes: 256 << 10,
        }
    }
}

/// Labels attached to every stream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelsConfig {
    /// `node_name` label; the `NODE_NAME` environment variable when unset.
    pub node_name: Option<String>,
    /// Adds `pod_uid` (off by default: it changes with every pod and multiplies streams).
    pub pod_uid: bool,
    /// Adds `filename` to container files too (it is always set for other files).
    pub filename: bool,
    /// Labels added to every stream (e.g. `cluster: prod`).
    #[serde(rename = "static")]
    pub static_labels: BTreeMap<String, String>,
    /// Applied in order after the labels above.
    pub relabel: Vec<RelabelRule>,
}

/// One relabel rule. Regexes are anchored at both ends, as in Prometheus.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum RelabelRule {
    /// Drops streams whose `source_label` matches.
    Drop { source_label: String, regex: String },
    /// Keeps only streams whose `source_label` matches.
    Keep { source_label: String, regex: String },
    /// Renames a label (the value is kept).
    Rename {
        source_label: String,
        target_label: String,
    },
    /// Removes labels whose name matches.
    Labeldrop { regex: String },
}

/// Per-line stages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Lines (after joining partials) longer than this are truncated or dropped.
    pub max_line_size: usize,
    /// Truncate over-long lines (true) or drop them (false); both are counted.
    pub max_line_size_truncate: bool,
    /// Top-level fields of JSON lines promoted to labels (e.g. `level`).
    pub json_labels: Vec<String>,
    /// Lines matching any of these regexes are dropped (unanchored).
    pub drop: Vec<String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_line_size: 256 << 10,
            max_line_size_truncate: true,
            json_labels: Vec::new(),
            drop: Vec::new(),
        }
    }
}

/// Optional pod-label enrichment from the Kubernetes API, limited to the pods of this
/// node (`spec.nodeName` = the `node_name` label). Off by default; needs `get`/`list` on
/// `pods` (see `deploy/kubernetes/shipper-rbac.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Copies pod labels onto the streams of each pod of this node.
    pub enrich_pod_labels: bool,
    /// API base URL, e.g. `https://kubernetes.default.svc`. When unset:
    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, else
    /// `https://kubernetes.default.svc`.
    pub api_url: Option<String>,
    /// Bearer token, re-read on every refresh (projected tokens rotate); `null` sends no
    /// `Authorization` header (e.g. behind `kubectl proxy`).
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle trusted for an `https` API URL; `null` uses the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// How often the pod list is fetched.
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
    /// Timeout of one pod-list request.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Pod label keys to copy (e.g. `app.kubernetes.io/name`); empty copies all.
    pub labels: Vec<String>,
    /// Prepended to each copied label's sanitised name (e.g. `pod_label_`).
    pub label_prefix: String,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enrich_pod_labels: false,
            api_url: None,
            token_file: Some(PathBuf::from(
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
            )),
            ca_file: Some(PathBuf::from(
                "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            )),
            refresh_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            labels: Vec::new(),
            label_prefix: String::new(),
        }
    }
}

impl ShipperConfig {
    /// Reads and validates a YAML file.
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| Error::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        fn invalid(key: &'static str, value: impl ToString, why: &str) -> Error {
            Error::Invalid {
                key,
                value: value.to_string(),
                why: why.into(),
            }
        }
        let url = reqwest::Url::parse(&self.client.url)
            .map_err(|e| invalid("client.url", &self.client.url, &e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                "client.url",
                &self.client.url,
                "scheme must be http or https",
            ));
        }
        if self.client.batch_size == 0 {
            return Err(invalid("client.batch_size", 0, "must be at least 1 byte"));
        }
        if self.client.max_buffered_bytes < self.client.batch_size {
            return Err(invalid(
                "client.max_buffered_bytes",
                self.client.max_buffered_bytes,
                &format!(
                    "must be at least client.batch_size ({})",
                    self.client.batch_size
                ),
            ));
        }
        if self.client.min_backoff.is_zero() || self.client.max_backoff < self.client.min_backoff {
            return Err(invalid(
                "client.max_backoff",
                humantime::format_duration(self.client.max_backoff),
                "client.min_backoff must be > 0 and <= client.max_backoff",
            ));
        }
        if let Some(b) = &self.client.disk_buffer {
            if b.max_size_bytes < self.client.batch_size as u64 {
                return Err(invalid(
                    "client.disk_buffer.max_size_bytes",
                    b.max_size_bytes,
                    &format!(
                        "must hold at least one batch (client.batch_size = {})",
                        self.client.batch_size
                    ),
                ));
            }
        }
        if self.discovery.globs.is_empty() {
            return Err(invalid(
                "discovery.globs",
                "[]",
                "at least one glob is needed",
            ));
        }
        for g in &self.discovery.globs {
            glob::Pattern::new(g).map_err(|e| invalid("discovery.globs", g, &e.to_string()))?;
        }
        if self.discovery.max_open_files == 0 {
            return Err(invalid("discovery.max_open_files", 0, "must be at least 1"));
        }
        if self.discovery.read_chunk_bytes < 4096 {
            return Err(invalid(
                "discovery.read_chunk_bytes",
                self.discovery.read_chunk_bytes,
                "must be at least 4096",
            ));
        }
        if self.pipeline.max_line_size == 0 {
            return Err(invalid(
                "pipeline.max_line_size",
                0,
                "must be at least 1 byte",
            ));
        }
        for r in &self.pipeline.drop {
            regex::Regex::new(r).map_err(|e| invalid("pipeline.drop", r, &e.to_string()))?;
        }
        for name in self.labels.static_labels.keys() {
            if !lode_push::labels::is_valid_label_name(name) {
                return Err(invalid(
                    "labels.static",
                    name,
                    "label names must match [a-zA-Z_][a-zA-Z0-9_]*",
                ));
            }
        }
        for rule in &self.labels.relabel {
            let re = match rule {
                RelabelRule::Drop { regex, .. }
                | RelabelRule::Keep { regex, .. }
                | RelabelRule::Labeldrop { regex } => Some(regex),
                RelabelRule::Rename { target_label, .. } => {
                    if !lode_push::labels::is_valid_label_name(target_label) {
                        return Err(invalid(
                            "labels.relabel.target_label",
                            target_label,
                            "label names must match [a-zA-Z_][a-zA-Z0-9_]*",
                        ));
                    }
                    None
                }
            };
            if let Some(re) = re {
                regex::Regex::new(re)
                    .map_err(|e| invalid("labels.relabel.regex", re, &e.to_string()))?;
            }
        }
        let k = &self.kubernetes;
        if let Some(api) = &k.api_url {
            let url = reqwest::Url::parse(api)
                .map_err(|e| invalid("kubernetes.api_url", api, &e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid(
                    "kubernetes.api_url",
                    api,
                    "scheme must be http or https",
                ));
            }
        }
        if k.refresh_interval.is_zero() {
            return Err(invalid(
                "kubernetes.refresh_interval",
                "0s",
                "must be greater than 0",
            ));
        }
        if !k.label_prefix.is_empty() && !lode_push::labels::is_valid_label_name(&k.label_prefix) {
            return Err(invalid(
                "kubernetes.label_prefix",
                &k.label_prefix,
                "must be empty or match [a-zA-Z_][a-zA-Z0-9_]*",
            ));
        }
        Ok(())
    }
}

/// Serde adapter for Go-style duration strings.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_config_parses_and_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shipper.example.yaml");
        let cfg = ShipperConfig::load(&path).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.client.batch_wait, Duration::from_secs(1));
        assert_eq!(cfg.pipeline.json_labels, vec!["level".to_string()]);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = serde_yaml::from_str::<ShipperConfig>("client:\n  urll: x\n").unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn validation_names_the_key_and_the_value() {
        let mut cfg = ShipperConfig::default();
        cfg.client.url = "ftp://x".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("client.url") && err.contains("ftp://x"),
            "{err}"
        );

        let mut cfg = ShipperConfig::default();
        cfg.pipeline.drop = vec!["(".into()];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("pipeline.drop"), "{err}");
    }

    #[test]
    fn kubernetes_enrichment_is_off_by_default_and_uses_service_account_paths() {
        let cfg: ShipperConfig = serde_yaml::from_str("kubernetes: {}").unwrap();
        assert!(!cfg.kubernetes.enrich_pod_labels);
        assert_eq!(
            cfg.kubernetes.token_file.as_deref(),
            Some(std::path::Path::new(
                "/var/run/secrets/kubernetes.io/serviceaccount/token"
            ))
        );
        assert_eq!(cfg.kubernetes.refresh_interval, Duration::from_secs(30));
        let cfg: ShipperConfig = serde_yaml::from_str(
            "kubernetes: {enrich_pod_labels: true, ca_file: null, labels: [app.kubernetes.io/name], refresh_interval: 5s}",
        )
        .unwrap();
        assert!(cfg.kubernetes.enrich_pod_labels && cfg.kubernetes.ca_file.is_none());
        cfg.validate().unwrap();
        let err = serde_yaml::from_str::<ShipperConfig>("kubernetes: {enrich: true}").unwrap_err();
        assert!(err.to_string().contains("enrich"), "{err}");
        let mut cfg = ShipperConfig::default();
        cfg.kubernetes.label_prefix = "pod-".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("kubernetes.label_prefix"), "{err}");
    }
}
