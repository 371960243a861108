//! Limits: per-tenant settings (`limits_config`) and their runtime overrides.
//!
//! Owns the `limits_config` keys (Loki's names and defaults), per-tenant overrides read from
//! a Loki-style runtime config file (`overrides: {<tenant>: {<key>: <value>}}`, re-read
//! while running), and the per-tenant ingestion rate limiter ([`rate`]). It does not own
//! enforcement: the distributor checks pushes, the querier checks queries and retention
//! deletes data, each reading the tenant's values through [`Limits::for_tenant`].
//!
//! An override replaces only the keys it names; every other key keeps the `limits_config`
//! value, as in Loki.

pub mod rate;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::config::units::{ByteSize, ConfigDuration};
use crate::tenant::TenantId;

pub use rate::IngestionRateLimiter;

/// The one aggregation `shard_aggregations` may list.
pub const APPROX_TOPK: &str = "approx_topk";

/// Bytes in one "MB" of `ingestion_rate_mb`: Loki means MiB here.
pub const BYTES_PER_MB: f64 = 1_048_576.0;

/// Why limits or their overrides could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read runtime config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid runtime config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("invalid {scope}.{key}: {reason}")]
    Invalid {
        scope: String,
        key: &'static str,
        reason: String,
    },
}

/// One per-stream retention rule: streams matching `selector` keep data for `period`; when
/// several rules match, the highest `priority` wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRetention {
    /// A LogQL stream selector, e.g. `{namespace="dev"}`.
    pub selector: String,
    #[serde(default)]
    pub priority: u32,
    pub period: ConfigDuration,
}

/// The `limits_config` section: ingestion, stream, query and retention limits of a tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained push rate per tenant, in MiB/s of line bytes; 0 disables rate limiting.
    pub ingestion_rate_mb: f64,
    /// Largest burst per tenant, in MiB; a single push larger than this is always refused.
    pub ingestion_burst_size_mb: f64,
    pub max_label_names_per_series: usize,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    /// Longest accepted line; 0 disables the check.
    pub max_line_size: ByteSize,
    /// Cut long lines to `max_line_size` instead of refusing them.
    pub max_line_size_truncate: bool,
    pub reject_old_samples: bool,
    pub reject_old_samples_max_age: ConfigDuration,
    /// How far into the future an entry's timestamp may be.
    pub creation_grace_period: ConfigDuration,
    /// Active streams per tenant; 0 disables the check.
    pub max_global_streams_per_user: usize,
    /// Add `service_name` from the first of these labels a stream has.
    pub discover_service_name: Vec<String>,
    /// Add `detected_level` structured metadata from the line when absent.
    pub discover_log_levels: bool,
    /// Longest `[start, end]` a query may cover; 0 disables the check.
    pub max_query_length: ConfigDuration,
    /// How far back queries may look; 0 means only retention bounds them.
    pub max_query_lookback: ConfigDuration,
    pub max_entries_limit_per_query: u32,
    pub max_query_series: usize,
    pub query_timeout: ConfigDuration,
    /// Lets `variants(...) of (...)` queries run (experimental in Loki, off by default).
    pub enable_multi_variant_queries: bool,
    /// Aggregations Loki shards; listing `approx_topk` lets it run (instant queries only).
    pub shard_aggregations: Vec<String>,
    /// How long data is kept; 0 keeps it forever.
    pub retention_period: ConfigDuration,
    pub retention_stream: Vec<StreamRetention>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            ingestion_rate_mb: 4.0,
            ingestion_burst_size_mb: 6.0,
            max_label_names_per_series: 15,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            max_line_size: ByteSize(256_000),
            max_line_size_truncate: false,
            reject_old_samples: true,
            reject_old_samples_max_age: ConfigDuration::from_hours(168),
            creation_grace_period: ConfigDuration::from_secs(600),
            max_global_streams_per_user: 5000,
            discover_service_name: [
                "service",
                "app",
                "application",
                "app_name",
                "name",
                "app_kubernetes_io_name",
                "container",
                "container_name",
                "k8s_container_name",
                "component",
                "workload",
                "job",
                "k8s_job_name",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            discover_log_levels: true,
            max_query_length: ConfigDuration::from_hours(721),
            max_query_lookback: ConfigDuration::ZERO,
            max_entries_limit_per_query: 5000,
            max_query_series: 500,
            query_timeout: ConfigDuration::from_secs(60),
            enable_multi_variant_queries: false,
            shard_aggregations: Vec::new(),
            retention_period: ConfigDuration::from_hours(744),
            retention_stream: Vec::new(),
        }
    }
}

impl LimitsConfig {
    /// Checks values that parse but cannot work; `scope` names where they came from
    /// (`limits_config` or `overrides.<tenant>`) so the message says which key to change.
    pub fn validate(&self, scope: &str) -> Result<(), Error> {
        let invalid = |key: &'static str, reason: String| Error::Invalid {
            scope: scope.to_string(),
            key,
            reason,
        };
        for (key, v) in [
            ("ingestion_rate_mb", self.ingestion_rate_mb),
            ("ingestion_burst_size_mb", self.ingestion_burst_size_mb),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(invalid(key, format!("{v} must be a number >= 0")));
            }
        }
        if self.ingestion_rate_mb > 0.0 && self.ingestion_burst_size_mb <= 0.0 {
            return Err(invalid(
                "ingestion_burst_size_mb",
                "must be > 0 while ingestion_rate_mb is set, or no push could ever pass".into(),
            ));
        }
        if self.max_label_names_per_series == 0 {
            return Err(invalid(
                "max_label_names_per_series",
                "0 would refuse every stream; the default is 15".into(),
            ));
        }
        if self.max_entries_limit_per_query == 0 {
            return Err(invalid(
                "max_entries_limit_per_query",
                "0 would refuse every log query; the default is 5000".into(),
            ));
        }
        if let Some(op) = self
            .shard_aggregations
            .iter()
            .find(|op| op.as_str() != APPROX_TOPK)
        {
            return Err(invalid(
                "shard_aggregations",
                format!("unknown aggregation {op:?}; the only one is {APPROX_TOPK}"),
            ));
        }
        for (i, rule) in self.retention_stream.iter().enumerate() {
            let sel = rule.selector.trim();
            if !(sel.starts_with('{') && sel.ends_with('}')) || sel.len() < 3 {
                return Err(invalid(
                    "retention_stream",
                    format!(
                        "rule {i} selector {:?} must be a stream selector like {{namespace=\"dev\"}}",
                        rule.selector
                    ),
                ));
            }
            if rule.period.is_zero() {
                return Err(invalid(
                    "retention_stream",
                    format!("rule {i} ({}) needs a period such as 24h", rule.selector),
                ));
            }
        }
        Ok(())
    }

    /// Whether `approx_topk` may run: `shard_aggregations` lists it.
    pub fn approx_topk_enabled(&self) -> bool {
        self.shard_aggregations.iter().any(|op| op == APPROX_TOPK)
    }

    /// `ingestion_rate_mb` in bytes per second.
    pub fn ingestion_rate_bytes(&self) -> f64 {
        self.ingestion_rate_mb * BYTES_PER_MB
    }

    /// `ingestion_burst_size_mb` in bytes.
    pub fn ingestion_burst_bytes(&self) -> f64 {
        self.ingestion_burst_size_mb * BYTES_PER_MB
    }
}

/// The runtime config file: Loki's `overrides:` form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeConfigFile {
    #[serde(default)]
    overrides: Option<BTreeMap<String, serde_yaml::Value>>,
}

/// Per-tenant limits: the `limits_config` defaults plus any tenant overrides, swappable at
/// run time without blocking readers.
pub struct Limits {
    defaults: Arc<LimitsConfig>,
    overrides: ArcSwap<HashMap<TenantId, Arc<LimitsConfig>>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("defaults", &self.defaults)
            .field("overridden_tenants", &self.overrides.load().len())
            .finish()
    }
}

impl Limits {
    /// Limits where every tenant gets `defaults`.
    pub fn new(defaults: LimitsConfig) -> Self {
        Limits {
            defaults: Arc::new(defaults),
            overrides: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// Limits with explicit per-tenant values (each a complete `LimitsConfig`).
    pub fn with_overrides(
        defaults: LimitsConfig,
        overrides: HashMap<TenantId, LimitsConfig>,
    ) -> Self {
        let limits = Limits::new(defaults);
        limits.overrides.store(Arc::new(
            overrides
                .into_iter()
                .map(|(t, l)| (t, Arc::new(l)))
                .collect(),
        ));
        limits
    }

    /// The limits that apply to `tenant`.
    pub fn for_tenant(&self, tenant: &TenantId) -> Arc<LimitsConfig> {
        self.overrides
            .load()
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| self.defaults.clone())
    }

    /// The `limits_config` values, which tenants without overrides get.
    pub fn defaults(&self) -> Arc<LimitsConfig> {
        self.defaults.clone()
    }

    /// Tenants that have overrides (retention needs to visit tenants whose period differs).
    pub fn overridden_tenants(&self) -> Vec<TenantId> {
        let mut v: Vec<TenantId> = self.overrides.load().keys().cloned().collect();
        v.sort();
        v
    }

    /// Reads a runtime config file and swaps in its overrides. On error the previous
    /// overrides stay in force, as in Loki.
    pub fn reload(&self, path: &Path) -> Result<usize, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let parsed = self.parse_overrides(&text).map_err(|reason| Error::Parse {
            path: path.display().to_string(),
            reason,
        })?;
        let n = parsed.len();
        self.overrides.store(Arc::new(parsed));
        Ok(n)
    }

    /// Parses the `overrides:` document, laying each tenant's keys over the defaults.
    fn parse_overrides(&self, text: &str) -> Result<HashMap<TenantId, Arc<LimitsConfig>>, String> {
        let file: RuntimeConfigFile = if text.trim().is_empty() {
            RuntimeConfigFile { overrides: None }
        } else {
            serde_yaml::from_str(text).map_err(|e| e.to_string())?
        };
        let base = serde_yaml::to_value(&*self.defaults).map_err(|e| e.to_string())?;
        let mut out = HashMap::new();
        for (tenant, value) in file.overrides.unwrap_or_default() {
            let id = TenantId::new(&tenant).map_err(|e| format!("overrides: {e}"))?;
            let mut merged = base.clone();
            match (&mut merged, value) {
                (serde_yaml::Value::Mapping(m), serde_yaml::Value::Mapping(o)) => {
                    for (k, v) in o {
                        m.insert(k, v);
                    }
                }
                (_, serde_yaml::Value::Null) => {}
                (_, other) => {
                    return Err(format!(
                        "overrides.{tenant} must be a map of limits_config keys, got {other:?}"
                    ))
                }
            }
            let limits: LimitsConfig =
                serde_yaml::from_value(merged).map_err(|e| format!("overrides.{tenant}: {e}"))?;
            limits
                .validate(&format!("overrides.{tenant}"))
                .map_err(|e| e.to_string())?;
            out.insert(id, Arc::new(limits));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn defaults_match_lokis() {
        let l: LimitsConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(l, LimitsConfig::default());
        assert_eq!(l.max_line_size.bytes(), 256_000);
        assert_eq!(l.retention_period.to_string(), "744h");
        assert_eq!(l.reject_old_samples_max_age.to_string(), "168h");
        l.validate("limits_config").unwrap();
    }

    #[test]
    fn yaml_uses_lokis_key_names_and_units() {
        let l: LimitsConfig = serde_yaml::from_str(
            "max_line_size: 256KB\nreject_old_samples_max_age: 1w\nretention_period: 24h\n\
             retention_stream:\n  - selector: '{namespace=\"dev\"}'\n    priority: 1\n    period: 48h\n",
        )
        .unwrap();
        assert_eq!(l.max_line_size.to_string(), "256KB");
        assert_eq!(l.retention_stream[0].period.to_string(), "48h");
        assert_eq!(l.retention_period, ConfigDuration::from_hours(24));
    }

    #[test]
    fn experimental_query_gates_are_off_by_default_and_take_only_approx_topk() {
        let l = LimitsConfig::default();
        assert!(!l.enable_multi_variant_queries);
        assert!(!l.approx_topk_enabled());
        let l: LimitsConfig = serde_yaml::from_str(
            "enable_multi_variant_queries: true\nshard_aggregations: [approx_topk]\n",
        )
        .unwrap();
        assert!(l.enable_multi_variant_queries);
        assert!(l.approx_topk_enabled());
        l.validate("limits_config").unwrap();
        let l: LimitsConfig = serde_yaml::from_str("shard_aggregations: [topk]").unwrap();
        let err = l.validate("limits_config").unwrap_err().to_string();
        assert!(err.contains("limits_config.shard_aggregations"), "{err}");
        assert!(err.contains("\"topk\""), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = serde_yaml::from_str::<LimitsConfig>("max_lines_size: 1KB")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_lines_size"), "{err}");
    }

    #[test]
    fn validate_names_the_key_and_scope() {
        let l = LimitsConfig {
            ingestion_rate_mb: -1.0,
            ..Default::default()
        };
        let err = l.validate("overrides.team-a").unwrap_err().to_string();
        assert!(
            err.starts_with("invalid overrides.team-a.ingestion_rate_mb: -1"),
            "{err}"
        );
        let l = LimitsConfig {
            retention_stream: vec![StreamRetention {
                selector: "namespace=dev".into(),
                priority: 1,
                period: ConfigDuration::from_hours(24),
            }],
            ..Default::default()
        };
        assert!(l
            .validate("limits_config")
            .unwrap_err()
            .to_string()
            .contains("retention_stream"));
    }

    #[test]
    fn overrides_replace_only_the_keys_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.yaml");
        std::fs::write(
            &path,
            "overrides:\n  team-a:\n    retention_period: 24h\n    max_line_size: 1KB\n",
        )
        .unwrap();
        let defaults = LimitsConfig {
            max_label_names_per_series: 20,
            ..Default::default()
        };
        let limits = Limits::new(defaults);
        assert_eq!(limits.reload(&path).unwrap(), 1);
        let a = limits.for_tenant(&tenant("team-a"));
        assert_eq!(a.retention_period, ConfigDuration::from_hours(24));
        assert_eq!(a.max_line_size.bytes(), 1000);
        assert_eq!(a.max_label_names_per_series, 20);
        let b = limits.for_tenant(&tenant("team-b"));
        assert_eq!(b.retention_period, ConfigDuration::from_hours(744));
        assert_eq!(limits.overridden_tenants(), vec![tenant("team-a")]);
    }

    #[test]
    fn a_bad_reload_keeps_the_previous_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.yaml");
        std::fs::write(&path, "overrides:\n  team-a:\n    max_line_size: 1KB\n").unwrap();
        let limits = Limits::new(LimitsConfig::default());
        limits.reload(&path).unwrap();
        std::fs::write(&path, "overrides:\n  team-a:\n    max_line_sise: 2KB\n").unwrap();
        let err = limits.reload(&path).unwrap_err().to_string();
        assert!(err.contains("max_line_sise"), "{err}");
        assert_eq!(
            limits.for_tenant(&tenant("team-a")).max_line_size.bytes(),
            1000
        );
        std::fs::write(&path, "overrides:\n  ../etc:\n    max_line_size: 2KB\n").unwrap();
        assert!(limits
            .reload(&path)
            .unwrap_err()
            .to_string()
            .contains("invalid tenant id"));
    }
}
