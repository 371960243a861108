//! `RulerConfig`: the `ruler:` block of Lode's configuration, with Loki's key names.
//!
//! Owns the keys, their defaults and `validate()`. It does not own composing the block
//! into the top-level configuration file (`config`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::duration::PromDuration;

/// The `ruler:` block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulerConfig {
    /// Run the ruler. Off by default: a server without rules does no rule work and
    /// serves no rule APIs.
    pub enabled: bool,
    /// Where rule files live: `<directory>/<tenant>/<namespace file>`.
    pub storage: RuleStorageConfig,
    /// Scratch space for the ruler's own state (alert states kept across restarts).
    pub rule_path: PathBuf,
    /// Comma-separated Alertmanager base URLs; a path is kept as a prefix of
    /// `/api/v2/alerts`. Empty: alerts are evaluated but sent nowhere.
    pub alertmanager_url: String,
    /// Interval of groups that set none.
    pub evaluation_interval: PromDuration,
    /// How often rule files are re-read to pick up changes.
    pub poll_interval: PromDuration,
    /// Serve the rule config and status APIs.
    pub enable_api: bool,
    /// Base URL for alerts' `generatorURL` (usually Grafana); empty: Lode's own URL.
    pub external_url: String,
    /// UID of the Grafana Loki data source, for the Explore link in `generatorURL`.
    pub datasource_uid: String,
    /// Labels added to every alert that does not already have them.
    pub external_labels: BTreeMap<String, String>,
    /// How often a still-firing or recently resolved alert is re-sent.
    pub resend_delay: PromDuration,
    /// After a restart, a pending alert with at least this much `for` keeps at least
    /// this much time left before it fires.
    pub for_grace_period: PromDuration,
    /// Saved alert state older than this is ignored at start.
    pub for_outage_tolerance: PromDuration,
    /// How far behind the evaluation tick queries look, so that late logs are counted.
    /// A group's `query_offset` overrides it.
    pub evaluation_delay: PromDuration,
    /// Alerts waiting to be sent; the oldest are dropped beyond this.
    pub notification_queue_capacity: usize,
    /// Time limit of one POST to one Alertmanager.
    pub notification_timeout: PromDuration,
    /// Recording rules' destination.
    pub remote_write: RemoteWriteConfig,
    /// Per-tenant limits the config API enforces; 0 = unlimited.
    pub max_rules_per_rule_group: usize,
    pub max_rule_groups_per_tenant: usize,
}

/// `storage:` — only the local directory backend exists; it is writable by the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleStorageConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub local: LocalRuleStorageConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalRuleStorageConfig {
    pub directory: PathBuf,
}

/// `remote_write:` — where recorded series go (Prometheus remote write v1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    pub enabled: bool,
    /// A single client (Loki's older key).
    pub client: Option<RemoteWriteClientConfig>,
    /// Named clients (Loki's current key); every series goes to each.
    pub clients: BTreeMap<String, RemoteWriteClientConfig>,
    /// Send `X-Scope-OrgID: <tenant>` with each request, as Loki does.
    pub add_org_id_header: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteClientConfig {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub remote_timeout: PromDuration,
    /// Requests retried on 5xx, 429 and network errors before the batch is dropped.
    pub max_retries: u32,
    pub min_backoff: PromDuration,
    pub max_backoff: PromDuration,
    /// Batches waiting to be sent; the oldest are dropped beyond this.
    pub queue_capacity: usize,
}

impl Default for RulerConfig {
    fn default() -> Self {
        RulerConfig {
            enabled: false,
            storage: RuleStorageConfig::default(),
            rule_path: PathBuf::from("data/ruler"),
            alertmanager_url: String::new(),
            evaluation_interval: PromDuration::from_secs(60),
            poll_interval: PromDuration::from_secs(60),
            enable_api: true,
            external_url: String::new(),
            datasource_uid: String::new(),
            external_labels: BTreeMap::new(),
            resend_delay: PromDuration::from_secs(60),
            for_grace_period: PromDuration::from_secs(600),
            for_outage_tolerance: PromDuration::from_secs(3600),
            evaluation_delay: PromDuration::ZERO,
            notification_queue_capacity: 10_000,
            notification_timeout: PromDuration::from_secs(10),
            remote_write: RemoteWriteConfig {
                add_org_id_header: true,
                ..RemoteWriteConfig::default()
            },
            max_rules_per_rule_group: 0,
            max_rule_groups_per_tenant: 0,
        }
    }
}

impl Default for RuleStorageConfig {
    fn default() -> Self {
        RuleStorageConfig {
            kind: "local".to_string(),
            local: LocalRuleStorageConfig::default(),
        }
    }
}

impl Default for LocalRuleStorageConfig {
    fn default() -> Self {
        LocalRuleStorageConfig {
            directory: PathBuf::from("rules"),
        }
    }
}

impl Default for RemoteWriteClientConfig {
    fn default() -> Self {
        RemoteWriteClientConfig {
            url: String::new(),
            headers: BTreeMap::new(),
            remote_timeout: PromDuration::from_secs(30),
            max_retries: 10,
            min_backoff: PromDuration::from_millis(30),
            max_backoff: PromDuration::from_secs(5),
            queue_capacity: 10_000,
        }
    }
}

/// A `ruler:` value that cannot work, with the key to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid ruler config: {key} = {value:?}: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: String,
    },
}

impl RulerConfig {
    /// Checks every value, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, value: &dyn std::fmt::Display, why: &str| {
            Err(ConfigError::Invalid {
                key,
                value: value.to_string(),
                why: why.to_string(),
            })
        };
        if self.storage.kind != "local" && self.storage.kind != "filesystem" {
            return bad(
                "ruler.storage.type",
                &self.storage.kind,
                "only local (alias filesystem) rule storage is supported",
            );
        }
        if self.storage.local.directory.as_os_str().is_empty() {
            return bad(
                "ruler.storage.local.directory",
                &"",
                "set the directory holding <tenant>/<rule file>",
            );
        }
        for (key, d) in [
            ("ruler.evaluation_interval", self.evaluation_interval),
            ("ruler.poll_interval", self.poll_interval),
            ("ruler.resend_delay", self.resend_delay),
            ("ruler.notification_timeout", self.notification_timeout),
        ] {
            if d.is_zero() {
                return bad(key, &d, "must be greater than 0s");
            }
        }
        for url in self.alertmanager_urls() {
            if let Err(e) = reqwest::Url::parse(&url) {
                return bad("ruler.alertmanager_url", &url, &format!("not a URL: {e}"));
            }
        }
        if self.notification_queue_capacity == 0 {
            return bad(
                "ruler.notification_queue_capacity",
                &0,
                "must be at least 1",
            );
        }
        if !self.external_url.is_empty() {
            if let Err(e) = reqwest::Url::parse(&self.external_url) {
                return bad(
                    "ruler.external_url",
                    &self.external_url,
                    &format!("not a URL: {e}"),
                );
            }
        }
        for name in self.external_labels.keys() {
            if !lode_push::labels::is_valid_label_name(name) {
                return bad(
                    "ruler.external_labels",
                    name,
                    "label names must match [a-zA-Z_][a-zA-Z0-9_]*",
                );
            }
        }
        if self.remote_write.enabled {
            let clients = self.remote_write_clients();
            if clients.is_empty() {
                return bad(
                    "ruler.remote_write.clients",
                    &"",
                    "remote_write is enabled but no client url is set",
                );
            }
            for (name, client) in clients {
                if let Err(e) = reqwest::Url::parse(&client.url) {
                    return bad(
                        "ruler.remote_write.clients.url",
                        &format!("{name}: {}", client.url),
                        &format!("not a URL: {e}"),
                    );
                }
                if client.queue_capacity == 0 {
                    return bad(
                        "ruler.remote_write.clients.queue_capacity",
                        &0,
                        "must be at least 1",
                    );
                }
            }
        }
        Ok(())
    }

    /// The Alertmanager base URLs, trimmed, empty entries dropped.
    pub fn alertmanager_urls(&self) -> Vec<String> {
        self.alertmanager_url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `client` and `clients` together, keyed by name (`client` is named `default`).
    pub fn remote_write_clients(&self) -> Vec<(String, RemoteWriteClientConfig)> {
        let mut out: Vec<_> = self
            .remote_write
            .clients
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(client) = &self.remote_write.client {
            out.push(("default".to_string(), client.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_loki() {
        let c = RulerConfig::default();
        c.validate().unwrap();
        assert_eq!(c.evaluation_interval.to_string(), "1m");
        assert_eq!(c.resend_delay.to_string(), "1m");
        assert_eq!(c.for_grace_period.to_string(), "10m");
        assert_eq!(c.notification_queue_capacity, 10_000);
    }

    #[test]
    fn loki_style_yaml_is_accepted_and_unknown_keys_are_refused() {
        let yaml = r#"
storage: {type: local, local: {directory: /var/lib/lode/rules}}
alertmanager_url: http://am1:9093, http://am2:9093/prefix
evaluation_interval: 30s
external_labels: {cluster: eu-1}
remote_write: {enabled: true, client: {url: "http://prom:9090/api/v1/write"}}
"#;
        let c: RulerConfig = serde_yaml::from_str(yaml).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.alertmanager_urls(),
            vec!["http://am1:9093", "http://am2:9093/prefix"]
        );
        assert_eq!(c.remote_write_clients().len(), 1);
        let err = serde_yaml::from_str::<RulerConfig>("evaluaton_interval: 1m").unwrap_err();
        assert!(err.to_string().contains("evaluaton_interval"), "{err}");
    }

    #[test]
    fn validate_names_the_key_and_value_at_fault() {
        let c = RulerConfig {
            alertmanager_url: "not a url".into(),
            ..RulerConfig::default()
        };
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("ruler.alertmanager_url"), "{msg}");
        assert!(msg.contains("not a url"), "{msg}");

        let c = RulerConfig {
            remote_write: RemoteWriteConfig {
                enabled: true,
                ..RemoteWriteConfig::default()
            },
            ..RulerConfig::default()
        };
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("ruler.remote_write.clients"), "{msg}");
    }
}
