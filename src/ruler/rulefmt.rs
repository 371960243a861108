//! Rule groups in Prometheus' `rulefmt` YAML with LogQL `expr`, and their validation.
//!
//! Owns the file format (`groups:` of `name`, `interval`, `limit`, `query_offset`,
//! `rules:` of `alert`/`record`, `expr`, `for`, `keep_firing_for`, `labels`,
//! `annotations`), strict parsing for rule files, lenient parsing for API bodies, the
//! YAML Grafana reads back (zero values omitted), and every check Loki applies before a
//! group is accepted, plus one more: `expr` must be a metric query. It does not own
//! evaluation (`alerting`, `recording`) or where groups are stored (`store`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::duration::PromDuration;
use super::template::Template;

/// A rule file: `groups:` and nothing else.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

/// One rule group: rules evaluated in order on one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    /// Zero means the ruler's `evaluation_interval`.
    #[serde(default, skip_serializing_if = "PromDuration::is_zero")]
    pub interval: PromDuration,
    /// Maximum alerts (pending + firing) or recorded series per rule; 0 = unlimited.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub limit: u64,
    /// How far behind the evaluation tick the queries look, for late logs; zero means
    /// the ruler's `evaluation_delay`.
    #[serde(default, skip_serializing_if = "PromDuration::is_zero")]
    pub query_offset: PromDuration,
    #[serde(default)]
    pub rules: Vec<RuleDesc>,
}

/// One alerting or recording rule as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDesc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    #[serde(default)]
    pub expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "PromDuration::is_zero")]
    pub for_: PromDuration,
    #[serde(default, skip_serializing_if = "PromDuration::is_zero")]
    pub keep_firing_for: PromDuration,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl RuleDesc {
    /// The alert name or recorded metric name.
    pub fn name(&self) -> &str {
        self.alert
            .as_deref()
            .or(self.record.as_deref())
            .unwrap_or("")
    }

    pub fn is_alerting(&self) -> bool {
        self.alert.is_some()
    }
}

/// Why rule text was refused. Each message names the source, the group and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleFormatError {
    #[error("{source_name}: invalid rule YAML: {message}")]
    Yaml {
        source_name: String,
        message: String,
    },
    #[error("{}", join_problems(.0))]
    Invalid(Vec<Problem>),
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One validation failure, located as precisely as the check allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File path or API namespace.
    pub source_name: String,
    pub group: Option<String>,
    /// 1-based position of the rule in its group, and its name.
    pub rule: Option<(usize, String)>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.source_name)?;
        if let Some(group) = &self.group {
            write!(f, " group {group:?},")?;
        }
        if let Some((index, name)) = &self.rule {
            write!(f, " rule {index} {name:?}:")?;
        }
        write!(f, " {}", self.message)
    }
}

/// Group keys the API keeps; others (Grafana's `source_tenants`, Mimir's
/// `evaluation_delay`...) are dropped, as Loki drops them.
const GROUP_KEYS: [&str; 5] = ["name", "interval", "limit", "query_offset", "rules"];
const RULE_KEYS: [&str; 7] = [
    "record",
    "alert",
    "expr",
    "for",
    "keep_firing_for",
    "labels",
    "annotations",
];

/// Parses a rule file strictly (unknown keys are errors, as in Loki) and validates it.
/// `source_name` (the path) prefixes every error.
pub fn parse_file(source_name: &str, text: &str) -> Result<RuleFile, RuleFormatError> {
    let file: RuleFile = serde_yaml::from_str(text).map_err(|e| RuleFormatError::Yaml {
        source_name: source_name.to_string(),
        message: yaml_message(&e, text),
    })?;
    let problems = validate_groups(source_name, &file.groups);
    if problems.is_empty() {
        Ok(file)
    } else {
        Err(RuleFormatError::Invalid(problems))
    }
}

/// Parses one group as POSTed to the config API: leniently (unknown keys are dropped,
/// as Loki does, because Grafana sends keys of newer formats), then validates it.
pub fn parse_api_group(namespace: &str, text: &str) -> Result<RuleGroup, RuleFormatError> {
    let yaml_err = |message: String| RuleFormatError::Yaml {
        source_name: namespace.to_string(),
        message,
    };
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| yaml_err(yaml_message(&e, text)))?;
    let Some(map) = value.as_mapping_mut() else {
        return Err(yaml_err(
            "the body must be one rule group (a mapping with name and rules)".to_string(),
        ));
    };
    map.retain(|k, _| k.as_str().is_some_and(|k| GROUP_KEYS.contains(&k)));
    if let Some(rules) = map.get_mut("rules").and_then(|r| r.as_sequence_mut()) {
        for rule in rules {
            if let Some(rule) = rule.as_mapping_mut() {
                rule.retain(|k, _| k.as_str().is_some_and(|k| RULE_KEYS.contains(&k)));
            }
        }
    }
    let group: RuleGroup = serde_yaml::from_value(value).map_err(|e| yaml_err(e.to_string()))?;
    let problems = validate_groups(namespace, std::slice::from_ref(&group));
    if problems.is_empty() {
        Ok(group)
    } else {
        Err(RuleFormatError::Invalid(problems))
    }
}

/// serde_yaml's message plus, for strict-mode surprises, the hint users need most.
fn yaml_message(e: &serde_yaml::Error, text: &str) -> String {
    let mut message = e.to_string();
    if message.contains("unknown field") && !text.contains("groups:") {
        message.push_str(" (a rule file starts with `groups:`; see docs/alerting.md)");
    }
    message
}

/// Every check Loki's `ValidateGroups` makes, plus "expr is a metric query".
pub fn validate_groups(source_name: &str, groups: &[RuleGroup]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for group in groups {
        let at_group = |message: String| Problem {
            source_name: source_name.to_string(),
            group: Some(group.name.clone()),
            rule: None,
            message,
        };
        if group.name.is_empty() {
            problems.push(at_group("group name must not be empty".to_string()));
        } else if !seen.insert(group.name.as_str()) {
            problems.push(at_group(format!(
                "group name {:?} is repeated; group names must be unique in a file",
                group.name
            )));
        }
        if group.rules.is_empty() {
            problems.push(at_group("group has no rules".to_string()));
        }
        for (i, rule) in group.rules.iter().enumerate() {
            for message in validate_rule(rule) {
                problems.push(Problem {
                    source_name: source_name.to_string(),
                    group: Some(group.name.clone()),
                    rule: Some((i + 1, rule.name().to_string())),
                    message,
                });
            }
        }
    }
    problems
}

fn validate_rule(rule: &RuleDesc) -> Vec<String> {
    let mut out = Vec::new();
    match (&rule.alert, &rule.record) {
        (Some(_), Some(_)) => out.push("only one of `alert` and `record` may be set".into()),
        (None, None) => out.push("one of `alert` or `record` must be set".into()),
        (Some(alert), None) if alert.trim().is_empty() => {
            out.push("`alert` must not be empty".into())
        }
        (None, Some(record)) if !is_valid_metric_name(record) => out.push(format!(
            "invalid recording rule name {record:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        )),
        _ => {}
    }
    if rule.expr.trim().is_empty() {
        out.push("`expr` must not be empty".into());
    } else if let Err(e) = check_logql(&rule.expr) {
        out.push(format!("invalid expr {:?}: {e}", rule.expr.trim()));
    }
    if rule.record.is_some() {
        if !rule.for_.is_zero() {
            out.push("`for` is only allowed on alerting rules".into());
        }
        if !rule.keep_firing_for.is_zero() {
            out.push("`keep_firing_for` is only allowed on alerting rules".into());
        }
        if !rule.annotations.is_empty() {
            out.push("`annotations` are only allowed on alerting rules".into());
        }
    }
    for (name, value) in &rule.labels {
        if name == "__name__" {
            out.push("label name `__name__` is reserved".into());
        } else if !lode_push::labels::is_valid_label_name(name) {
            out.push(format!(
                "invalid label name {name:?}: must match [a-zA-Z_][a-zA-Z0-9_]*"
            ));
        }
        if rule.is_alerting() {
            if let Err(e) = Template::parse(value) {
                out.push(format!("invalid template in label {name:?}: {e}"));
            }
        }
    }
    for (name, value) in &rule.annotations {
        if !lode_push::labels::is_valid_label_name(name) {
            out.push(format!(
                "invalid annotation name {name:?}: must match [a-zA-Z_][a-zA-Z0-9_]*"
            ));
        }
        if let Err(e) = Template::parse(value) {
            out.push(format!("invalid template in annotation {name:?}: {e}"));
        }
    }
    out
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, Prometheus' legacy metric-name rule.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Checks that `expr` is LogQL and a *metric* query. Log queries parse but cannot be
/// evaluated by a rule, so Lode refuses them up front instead of failing every
/// evaluation as Loki does.
pub fn check_logql(expr: &str) -> Result<(), String> {
    match query_lang::parse_expr(expr) {
        Ok(query_lang::Expr::Metric(_) | query_lang::Expr::Variants(_)) => Ok(()),
        Ok(query_lang::Expr::Log(_)) => {
            Err("this is a log query; rules need a metric query such as \
             sum(rate({app=\"api\"} |= \"error\" [5m]))"
                .to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Serializes groups by namespace the way the config API returns them.
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(value)
}
