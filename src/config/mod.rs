//! Configuration: `lode serve`'s YAML file, embedded defaults and flag overrides.
//!
//! Owns the top-level [`LodeConfig`] with Loki's section and key names (`auth_enabled`,
//! `server`, `common`, `limits_config`, `ingester`, `storage_config`, `compactor`, `ruler`,
//! `runtime_config`), so a Loki user's file carries over; reading it (with optional
//! `${VAR}` / `${VAR:-default}` expansion, Loki's `-config.expand-env`); deriving the WAL and
//! segment directories from `common.path_prefix`; and checking the whole thing
//! ([`LodeConfig::validate`]). Every section refuses unknown keys, and the error names the
//! key and its line.
//!
//! It does not own the keys of the sections other modules define (`limits`, `ingester`,
//! `storage`, `wal`, `ruler`): it only composes them. Command-line flags are parsed in
//! `main.rs` and applied here through [`LodeConfig::apply_flags`].

pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ingester::IngesterConfig;
use crate::limits::LimitsConfig;
use crate::ruler::config::RulerConfig;
use crate::storage::StorageConfig;
use units::{ByteSize, ConfigDuration};

/// Why the configuration could not be loaded or is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// serde_yaml's message names the unknown or mistyped key and its line and column.
    #[error("invalid config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("invalid config file {path}: {reason} (expanding environment variables because of --config.expand-env)")]
    Expand { path: String, reason: String },
    #[error("invalid {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("invalid --listen {value:?}: write ADDRESS:PORT, e.g. 0.0.0.0:3100 or 127.0.0.1:0")]
    Listen { value: String },
}

/// The whole configuration file. Every key has a default, so an empty file (or none) runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LodeConfig {
    /// Require `X-Scope-OrgID` on every request; when false every request acts as `fake`.
    pub auth_enabled: bool,
    pub server: ServerConfig,
    pub common: CommonConfig,
    pub distributor: DistributorConfig,
    pub limits_config: LimitsConfig,
    pub ingester: IngesterConfig,
    pub storage_config: StorageConfig,
    pub compactor: CompactorConfig,
    pub ruler: RulerConfig,
    pub runtime_config: RuntimeConfig,
    /// Which directories the file set itself (and `common.path_prefix` must not move).
    #[serde(skip)]
    explicit: ExplicitPaths,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ExplicitPaths {
    wal_dir: bool,
    chunks_dir: bool,
    ruler_dir: bool,
}

impl Default for LodeConfig {
    fn default() -> Self {
        let mut config = LodeConfig {
            auth_enabled: false,
            server: ServerConfig::default(),
            common: CommonConfig::default(),
            distributor: DistributorConfig::default(),
            limits_config: LimitsConfig::default(),
            ingester: IngesterConfig::default(),
            storage_config: StorageConfig::default(),
            compactor: CompactorConfig::default(),
            ruler: RulerConfig::default(),
            runtime_config: RuntimeConfig::default(),
            explicit: ExplicitPaths::default(),
        };
        config.derive_paths();
        config
    }
}

/// `server:` — where the HTTP API listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub http_listen_address: String,
    /// 0 picks a free port (tests); the bound port is logged.
    pub http_listen_port: u16,
    /// How long a SIGTERM waits for in-flight requests before flushing anyway.
    pub graceful_shutdown_timeout: ConfigDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_listen_address: "0.0.0.0".into(),
            http_listen_port: 3100,
            graceful_shutdown_timeout: ConfigDuration::from_secs(30),
        }
    }
}

/// `common:` — settings several components share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommonConfig {
    /// Data lives here: the WAL in `<path_prefix>/wal`, segments in `<path_prefix>/chunks`,
    /// the ruler's state in `<path_prefix>/ruler`, unless `ingester.wal.dir`,
    /// `storage_config.filesystem.directory` or `ruler.rule_path` say otherwise.
    pub path_prefix: PathBuf,
}

impl Default for CommonConfig {
    fn default() -> Self {
        CommonConfig {
            path_prefix: PathBuf::from("./data"),
        }
    }
}

/// `distributor:` — bounds on a push request before it is decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributorConfig {
    /// Largest push body as sent (compressed); larger → 413. Loki: `server.grpc_server_max_recv_msg_size`.
    pub max_recv_msg_size: ByteSize,
    /// Largest push body after snappy/gzip/deflate decompression; larger → 413.
    pub max_decompressed_size: ByteSize,
}

impl Default for DistributorConfig {
    fn default() -> Self {
        DistributorConfig {
            max_recv_msg_size: ByteSize(100 << 20),
            max_decompressed_size: ByteSize(512 << 20),
        }
    }
}

/// `compactor:` — the retention loop, and after each retention pass the merge of small
/// segments (`segment_compaction_*`, Lode-only keys: Loki's compactor compacts its index,
/// not its chunks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactorConfig {
    /// Delete data past `limits_config.retention_period`. On by default, unlike Loki,
    /// because Lode's embedded defaults promise 31 days of retention.
    pub retention_enabled: bool,
    /// How often the retention pass (then the segment compaction pass) runs.
    pub compaction_interval: ConfigDuration,
    /// Merge a tenant-day's small segments into larger, more compressed ones.
    pub segment_compaction_enabled: bool,
    /// A tenant-day is compacted once it has at least this many segments smaller than
    /// `segment_compaction_target_size`.
    pub segment_compaction_min_segments: usize,
    /// Segments this large are left alone, and one merge reads at most this many bytes
    /// of segments (the new segment is built in memory, so this bounds the pass's memory).
    pub segment_compaction_target_size: ByteSize,
    /// zstd level of the blocks compaction writes (the ingester writes level 1).
    pub segment_compaction_zstd_level: i32,
    /// Raw bytes (lines and structured metadata) per block compaction writes.
    pub segment_compaction_block_size: ByteSize,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        CompactorConfig {
            retention_enabled: true,
            compaction_interval: ConfigDuration::from_secs(600),
            segment_compaction_enabled: true,
            segment_compaction_min_segments: 4,
            segment_compaction_target_size: ByteSize(128 << 20),
            segment_compaction_zstd_level: 11,
            segment_compaction_block_size: ByteSize(1 << 20),
        }
    }
}

impl CompactorConfig {
    /// Checks the section; the error names the key to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: format!("compactor.{key}"),
            reason,
        };
        let needs_loop = self.retention_enabled || self.segment_compaction_enabled;
        if needs_loop && self.compaction_interval.is_zero() {
            return Err(invalid(
                "compaction_interval",
                "0s with retention_enabled or segment_compaction_enabled: use a positive interval such as 10m".into(),
            ));
        }
        if self.segment_compaction_min_segments < 2 {
            return Err(invalid(
                "segment_compaction_min_segments",
                format!(
                    "{} would rewrite lone segments over and over: use 2 or more (default 4)",
                    self.segment_compaction_min_segments
                ),
            ));
        }
        let target = self.segment_compaction_target_size.bytes();
        if !(1 << 20..=4 << 30).contains(&target) {
            return Err(invalid(
                "segment_compaction_target_size",
                format!(
                    "{} is outside 1MiB..4GiB (a merge holds its new segment in memory; default 128MiB)",
                    self.segment_compaction_target_size
                ),
            ));
        }
        let levels = zstd::compression_level_range();
        let level = self.segment_compaction_zstd_level;
        if level < 1 || !levels.contains(&level) {
            return Err(invalid(
                "segment_compaction_zstd_level",
                format!(
                    "{level} is not a zstd level: use 1..={} (default 11)",
                    levels.end()
                ),
            ));
        }
        let block = self.segment_compaction_block_size.bytes();
        if !(16 << 10..=16 << 20).contains(&block) {
            return Err(invalid(
                "segment_compaction_block_size",
                format!(
                    "{} is outside 16KiB..16MiB (default 1MiB)",
                    self.segment_compaction_block_size
                ),
            ));
        }
        Ok(())
    }
}

/// `runtime_config:` — the per-tenant overrides file, re-read while running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Loki-style `overrides:` file; empty means no overrides.
    pub file: PathBuf,
    /// How often `file` is re-read.
    pub period: ConfigDuration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            file: PathBuf::new(),
            period: ConfigDuration::from_secs(10),
        }
    }
}

impl LodeConfig {
    /// Reads `path` (or only the embedded defaults when `None`), expanding `${VAR}` first
    /// when `expand_env` is set. The result still needs [`LodeConfig::validate`].
    pub fn load(path: Option<&Path>, expand_env: bool) -> Result<LodeConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(LodeConfig::default());
        };
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        let text = if expand_env {
            expand_env_vars(&text, |v| std::env::var(v).ok()).map_err(|reason| {
                ConfigError::Expand {
                    path: name.clone(),
                    reason,
                }
            })?
        } else {
            text
        };
        LodeConfig::from_yaml(&text).map_err(|reason| ConfigError::Parse { path: name, reason })
    }

    /// Parses a YAML document over the embedded defaults. The error is serde_yaml's, which
    /// names the offending key with its line and column.
    pub fn from_yaml(text: &str) -> Result<LodeConfig, String> {
        if text.trim().is_empty() {
            return Ok(LodeConfig::default());
        }
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if value.is_null() {
            return Ok(LodeConfig::default());
        }
        // Parse the text, not the value, so errors keep their line numbers.
        let mut config: LodeConfig = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        config.explicit = ExplicitPaths {
            wal_dir: has_key(&value, &["ingester", "wal", "dir"]),
            chunks_dir: has_key(&value, &["storage_config", "filesystem", "directory"]),
            ruler_dir: has_key(&value, &["ruler", "rule_path"]),
        };
        config.derive_paths();
        Ok(config)
    }

    /// Applies `--data-dir` and `--listen`, which win over the file.
    pub fn apply_flags(
        &mut self,
        data_dir: Option<&Path>,
        listen: Option<&str>,
    ) -> Result<(), ConfigError> {
        if let Some(dir) = data_dir {
            self.common.path_prefix = dir.to_path_buf();
            self.derive_paths();
        }
        if let Some(listen) = listen {
            let addr: SocketAddr = listen.parse().map_err(|_| ConfigError::Listen {
                value: listen.to_string(),
            })?;
            self.server.http_listen_address = addr.ip().to_string();
            self.server.http_listen_port = addr.port();
        }
        Ok(())
    }

    /// Sets `path_prefix` and re-derives the directories the file did not set.
    pub fn set_path_prefix(&mut self, prefix: impl Into<PathBuf>) {
        self.common.path_prefix = prefix.into();
        self.derive_paths();
    }

    /// Points the WAL and segment directories under `common.path_prefix` unless the file
    /// named them itself.
    fn derive_paths(&mut self) {
        if !self.explicit.wal_dir {
            self.ingester.wal.dir = self.common.path_prefix.join("wal");
        }
        if !self.explicit.chunks_dir {
            self.storage_config.filesystem.directory = self.common.path_prefix.join("chunks");
        }
        if !self.explicit.ruler_dir {
            self.ruler.rule_path = self.common.path_prefix.join("ruler");
        }
    }

    /// The address `server.http_listen_address:http_listen_port` names.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        let host = self.server.http_listen_address.trim();
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        let text = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", self.server.http_listen_port)
        } else {
            format!("{host}:{}", self.server.http_listen_port)
        };
        text.parse().map_err(|_| ConfigError::Invalid {
            key: "server.http_listen_address".into(),
            reason: format!(
                "{:?} is not an IP address; use e.g. 0.0.0.0 or 127.0.0.1",
                self.server.http_listen_address
            ),
        })
    }

    /// Checks every section; the error names the key to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_string(),
            reason,
        };
        self.listen_addr()?;
        if self.common.path_prefix.as_os_str().is_empty() {
            return Err(invalid(
                "common.path_prefix",
                "is empty: set a directory for Lode's data, e.g. ./data".into(),
            ));
        }
        if self.distributor.max_recv_msg_size.bytes() == 0 {
            return Err(invalid(
                "distributor.max_recv_msg_size",
                "0 would refuse every push; the default is 100MiB".into(),
            ));
        }
        if self.distributor.max_decompressed_size.bytes()
            < self.distributor.max_recv_msg_size.bytes()
        {
            return Err(invalid(
                "distributor.max_decompressed_size",
                format!(
                    "{} is below distributor.max_recv_msg_size ({}): a body may never grow smaller when decompressed",
                    self.distributor.max_decompressed_size, self.distributor.max_recv_msg_size
                ),
            ));
        }
        self.compactor.validate()?;
        if !self.runtime_config.file.as_os_str().is_empty() && self.runtime_config.period.is_zero()
        {
            return Err(invalid(
                "runtime_config.period",
                "0s: use a positive reload period such as 10s".into(),
            ));
        }
        self.limits_config
            .validate("limits_config")
            .map_err(|e| invalid("limits_config", e.to_string()))?;
        self.ingester
            .validate()
            .map_err(|e| invalid("ingester", e.to_string()))?;
        self.storage_config
            .validate()
            .map_err(|e| invalid("storage_config", e.to_string()))?;
        self.ruler
            .validate()
            .map_err(|e| invalid("ruler", e.to_string()))?;
        Ok(())
    }

    /// `server.graceful_shutdown_timeout` as a std duration.
    pub fn graceful_shutdown_timeout(&self) -> Duration {
        self.server.graceful_shutdown_timeout.0
    }

    /// The effective configuration as YAML, with secrets masked (for `GET /config`).
    pub fn to_redacted_yaml(&self) -> String {
        let mut value = match serde_yaml::to_value(self) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render the configuration: {e}\n"),
        };
        redact(&mut value);
        serde_yaml::to_string(&value)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }
}

/// Keys whose values never leave the process through `/config`.
const SECRET_KEYS: [&str; 3] = ["secret_access_key", "password", "bearer_token"];

fn redact(value: &mut serde_yaml::Value) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let secret = k.as_str().is_some_and(|k| SECRET_KEYS.contains(&k));
                if secret && v.as_str().is_some_and(|s| !s.is_empty()) {
                    *v = serde_yaml::Value::String("********".into());
                } else {
                    redact(v);
                }
            }
        }
        serde_yaml::Value::Sequence(seq) => seq.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Whether the YAML document sets `path` (a list of nested keys).
fn has_key(value: &serde_yaml::Value, path: &[&str]) -> bool {
    let mut cur = value;
    for key in path {
        match cur.get(*key) {
            Some(v) => cur = v,
            None => return false,
        }
    }
    !cur.is_null()
}

/// Replaces `${VAR}` and `${VAR:-default}` with the variable's value (an unset `${VAR}`
/// becomes empty, as in Loki) and `$$` with `$`. Any other `$` is kept as written.
pub fn expand_env_vars(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(close) = body.find('}') else {
                let line = text[..text.len() - rest.len() + at].matches('\n').count() + 1;
                return Err(format!(
                    "unclosed \"${{\" at line {line}: write ${{VAR}} or ${{VAR:-default}}"
                ));
            };
            let inner = &body[..close];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "invalid environment variable reference \"${{{inner}}}\": names are [A-Za-z_][A-Za-z0-9_]*"
                ));
            }
            let value = match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => String::new(),
            };
            out.push_str(&value);
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn embedded_defaults_put_data_under_dot_data_and_listen_on_3100() {
        let c = LodeConfig::default();
        c.validate().unwrap();
        assert_eq!(c.listen_addr().unwrap().to_string(), "0.0.0.0:3100");
        assert_eq!(c.ingester.wal.dir, PathBuf::from("./data/wal"));
        assert_eq!(
            c.storage_config.filesystem.directory,
            PathBuf::from("./data/chunks")
        );
        assert!(!c.auth_enabled);
        assert_eq!(c.limits_config.retention_period.to_string(), "744h");
        assert_eq!(LodeConfig::from_yaml("").unwrap(), c);
    }

    #[test]
    fn a_loki_style_file_carries_over() {
        let c = LodeConfig::from_yaml(
            "auth_enabled: true\n\
             server:\n  http_listen_address: 127.0.0.1\n  http_listen_port: 3200\n\
             common:\n  path_prefix: /var/lode\n\
             limits_config:\n  max_line_size: 1MB\n  ingestion_rate_mb: 8\n\
             compactor:\n  retention_enabled: false\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.auth_enabled);
        assert_eq!(c.listen_addr().unwrap().to_string(), "127.0.0.1:3200");
        assert_eq!(c.ingester.wal.dir, PathBuf::from("/var/lode/wal"));
        assert_eq!(
            c.storage_config.filesystem.directory,
            PathBuf::from("/var/lode/chunks")
        );
        assert_eq!(c.ruler.rule_path, PathBuf::from("/var/lode/ruler"));
        assert_eq!(c.limits_config.max_line_size.bytes(), 1_000_000);
        assert!(!c.compactor.retention_enabled);
    }

    #[test]
    fn explicit_directories_are_not_moved_by_the_prefix() {
        let mut c = LodeConfig::from_yaml(
            "common:\n  path_prefix: /p\ningester:\n  wal:\n    dir: /fast/wal\n",
        )
        .unwrap();
        assert_eq!(c.ingester.wal.dir, PathBuf::from("/fast/wal"));
        assert_eq!(
            c.storage_config.filesystem.directory,
            PathBuf::from("/p/chunks")
        );
        c.apply_flags(Some(Path::new("/q")), None).unwrap();
        assert_eq!(c.ingester.wal.dir, PathBuf::from("/fast/wal"));
        assert_eq!(
            c.storage_config.filesystem.directory,
            PathBuf::from("/q/chunks")
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err =
            LodeConfig::from_yaml("server:\n  http_listen_port: 3100\n  http_listen_prot: 1\n")
                .unwrap_err();
        assert!(err.contains("http_listen_prot"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = LodeConfig::from_yaml("limits_config:\n  max_line_sise: 1KB\n").unwrap_err();
        assert!(err.contains("max_line_sise"), "{err}");
        let err = LodeConfig::from_yaml("schema_config: {}\n").unwrap_err();
        assert!(err.contains("schema_config"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let mut c = LodeConfig::from_yaml("server:\n  http_listen_port: 9999\n").unwrap();
        c.apply_flags(Some(Path::new("/tmp/x")), Some("127.0.0.1:0"))
            .unwrap();
        assert_eq!(c.listen_addr().unwrap().to_string(), "127.0.0.1:0");
        assert_eq!(c.ingester.wal.dir, PathBuf::from("/tmp/x/wal"));
        let err = c.apply_flags(None, Some("localhost")).unwrap_err();
        assert!(err.to_string().contains("--listen \"localhost\""), "{err}");
    }

    #[test]
    fn env_expansion_supports_defaults_and_escapes() {
        let lookup = env(&[("PORT", "3300"), ("EMPTY", "")]);
        assert_eq!(
            expand_env_vars(
                "p: ${PORT}\nq: ${NOPE:-7}\nr: ${EMPTY:-d}\ns: $$HOME $x ${NOPE}.",
                lookup
            )
            .unwrap(),
            "p: 3300\nq: 7\nr: d\ns: $HOME $x ."
        );
        let err = expand_env_vars("a: 1\nb: ${OPEN", env(&[])).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(expand_env_vars("${1X}", env(&[])).is_err());
    }

    proptest::proptest! {
        #[test]
        fn env_expansion_never_panics_and_keeps_text_without_dollars(text in ".{0,64}") {
            let out = expand_env_vars(&text, |_| Some("v".into()));
            if !text.contains('$') {
                proptest::prop_assert_eq!(out.unwrap(), text);
            }
        }
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = LodeConfig::default();
        c.server.http_listen_address = "not-an-ip".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("server.http_listen_address"), "{err}");
        let mut c = LodeConfig::default();
        c.limits_config.ingestion_rate_mb = -2.0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("ingestion_rate_mb"), "{err}");
    }

    #[test]
    fn segment_compaction_keys_parse_and_bad_values_name_their_key() {
        let c = LodeConfig::from_yaml(
            "compactor:\n  segment_compaction_enabled: false\n  segment_compaction_min_segments: 8\n  segment_compaction_target_size: 256MiB\n  segment_compaction_zstd_level: 15\n  segment_compaction_block_size: 2MiB\n",
        )
        .unwrap();
        assert!(!c.compactor.segment_compaction_enabled);
        assert_eq!(c.compactor.segment_compaction_min_segments, 8);
        assert_eq!(
            c.compactor.segment_compaction_target_size.bytes(),
            256 << 20
        );
        assert_eq!(c.compactor.segment_compaction_zstd_level, 15);
        assert_eq!(c.compactor.segment_compaction_block_size.bytes(), 2 << 20);
        c.validate().unwrap();
        let d = LodeConfig::default().compactor;
        assert!(d.segment_compaction_enabled);
        assert_eq!(d.segment_compaction_min_segments, 4);
        assert_eq!(d.segment_compaction_target_size.bytes(), 128 << 20);
        assert_eq!(d.segment_compaction_zstd_level, 11);
        assert_eq!(d.segment_compaction_block_size.bytes(), 1 << 20);
        let bad = [
            (
                "segment_compaction_min_segments: 1",
                "segment_compaction_min_segments",
            ),
            (
                "segment_compaction_target_size: 10KB",
                "segment_compaction_target_size",
            ),
            (
                "segment_compaction_zstd_level: 0",
                "segment_compaction_zstd_level",
            ),
            (
                "segment_compaction_zstd_level: 99",
                "segment_compaction_zstd_level",
            ),
            (
                "segment_compaction_block_size: 1KB",
                "segment_compaction_block_size",
            ),
            (
                "segment_compaction_block_size: 64MiB",
                "segment_compaction_block_size",
            ),
            ("compaction_interval: 0s", "compaction_interval"),
        ];
        for (line, key) in bad {
            let c = LodeConfig::from_yaml(&format!("compactor:\n  {line}\n")).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("compactor.{key}")), "{line}: {err}");
        }
        let err = LodeConfig::from_yaml("compactor:\n  segment_compaction_level: 3\n").unwrap_err();
        assert!(err.contains("segment_compaction_level"), "{err}");
    }

    #[test]
    fn config_yaml_masks_secrets_and_reparses() {
        let c = LodeConfig::from_yaml(
            "storage_config:\n  aws:\n    bucketnames: b\n    secret_access_key: hunter2\n",
        )
        .unwrap();
        let yaml = c.to_redacted_yaml();
        assert!(!yaml.contains("hunter2"), "{yaml}");
        assert!(
            yaml.contains("secret_access_key: '********'")
                || yaml.contains("secret_access_key: \"********\""),
            "{yaml}"
        );
        let d = LodeConfig::default();
        assert_eq!(
            LodeConfig::from_yaml(&d.to_redacted_yaml())
                .unwrap()
                .limits_config,
            d.limits_config
        );
    }
}
